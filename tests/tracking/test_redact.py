from hydra_dist.tracking.redact import (PARAM_VALUE_MAX, REDACTED, is_secret_env_name, prepare,
                                        redact, truncate)

ENV = {"HF_TOKEN": "hf_abcdefghijkl", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENG",
       "DB_PASSWORD": "hunter22!", "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp/key.json",
       "API_KEY": "1", "HOME": "/root", "MY_SECRET_SHORT": "abc"}


def test_secret_env_names():
    for name in ["HF_TOKEN", "aws_secret_access_key", "DB_PASSWORD", "X_CREDENTIALS", "API_KEY"]:
        assert is_secret_env_name(name)
    for name in ["HOME", "PATH", "SLURM_JOB_ID"]:
        assert not is_secret_env_name(name)


def test_env_secret_values_are_removed_from_any_value():
    values = {"tracking.uri": "https://mlflow?token=hf_abcdefghijkl",
              "data.path": "/etc/gcp/key.json", "note": "pw hunter22! and wJalrXUtnFEMIK7MDENG",
              "model.tokenizer": "byte", "train.steps": "1", "home": "/root"}
    out, n = redact(values, ENV)
    assert n == 3
    assert out["tracking.uri"] == f"https://mlflow?token={REDACTED}"
    assert out["data.path"] == REDACTED
    assert out["note"] == f"pw {REDACTED} and {REDACTED}"
    # Short env values ("1") and non-secret env vars (HOME) do not redact innocent values.
    assert out["train.steps"] == "1" and out["home"] == "/root"
    assert out["model.tokenizer"] == "byte"
    for v in out.values():
        for secret in ("hf_abcdefghijkl", "wJalrXUtnFEMIK7MDENG", "hunter22!"):
            assert secret not in v


def test_credential_keys_and_url_passwords():
    values = {"hub.hf_token": "anything-at-all", "db.password": "x", "s3.secret_access_key":
              "zzz", "uri": "postgresql://user:pa55word@db:5432/mlflow",
              "tokenizer.pad_token": "<pad>", "data.max_tokens": "4096", "sort_key": "step"}
    out, _ = redact(values, {})
    assert out["hub.hf_token"] == out["db.password"] == out["s3.secret_access_key"] == REDACTED
    assert out["uri"] == f"postgresql://user:{REDACTED}@db:5432/mlflow"
    # Config vocabulary that merely contains the words stays readable.
    assert out["tokenizer.pad_token"] == "<pad>"
    assert out["data.max_tokens"] == "4096" and out["sort_key"] == "step"


def test_truncation_is_visible_and_within_limit():
    v, cut = truncate("y" * 10000, PARAM_VALUE_MAX)
    assert cut and len(v) == PARAM_VALUE_MAX and "truncated 10000 chars" in v
    out, counts = prepare({"a": "y" * 10000, "b": "short"}, PARAM_VALUE_MAX, {})
    assert counts == {"redacted": 0, "truncated": 1} and out["b"] == "short"
