"""DeepSpeed ZeRO settings derived from model size and layout (parallel/ds_tuning.py), with
pinnable config keys; the shipped H100 files are the planner's best layouts."""
import importlib.util
from pathlib import Path

from hydra_dist.config import load_config
from hydra_dist.parallel.deepspeed_engine import ds_config
from hydra_dist.config.shapes import largest_layer_elements as layer_elements
from hydra_dist.parallel.ds_tuning import MAX_BUCKET, MIN_BUCKET


def test_gpu_rule_scales_with_model_and_tp():
    c15 = load_config("configs/unified/stage2_pretrain.yaml")            # 1.5B, tp 2, ZeRO-2
    c7 = load_config("configs/unified/stage2_pretrain_7b.yaml")          # 7B, tp 4, ZeRO-2
    z15, z7 = ds_config(c15, cuda=True)["zero_optimization"], ds_config(c7, cuda=True)["zero_optimization"]
    assert z15["overlap_comm"] and z7["overlap_comm"]
    # one decoder layer per TP rank: 1.5B 46.8M / 2, 7B 233M / 4 elements
    H, kv, F = 1536, 256, 8960
    assert z15["reduce_bucket_size"] == (2 * H * H + 2 * H * kv + 3 * H * F) // 2
    assert z15["allgather_bucket_size"] == z15["reduce_bucket_size"]
    assert MIN_BUCKET < z15["reduce_bucket_size"] < z7["reduce_bucket_size"] <= MAX_BUCKET
    z3 = ds_config(load_config("configs/unified/stage2_pretrain_7b.yaml", ["parallel.zero_stage=3"]),
                   cuda=True)["zero_optimization"]
    assert z3["stage3_param_persistence_threshold"] == 10 * 3584
    assert z3["stage3_prefetch_bucket_size"] == layer_elements(c7)


def test_cpu_keeps_exact_partitions_and_keys_pin_values():
    tiny = load_config("configs/tiny_cpu.yaml")
    z = ds_config(tiny, cuda=False)["zero_optimization"]
    assert z["overlap_comm"] is False and z["stage3_param_persistence_threshold"] == 0
    assert z["reduce_bucket_size"] == z["stage3_prefetch_bucket_size"] == MIN_BUCKET
    pinned = load_config("configs/tiny_cpu.yaml", ["parallel.deepspeed.overlap_comm=always",
                                                   "parallel.deepspeed.bucket_elements=123456",
                                                   "parallel.deepspeed.persistence_threshold=77"])
    z = ds_config(pinned, cuda=False)["zero_optimization"]
    assert z["overlap_comm"] is True and z["reduce_bucket_size"] == 123456
    assert z["stage3_param_persistence_threshold"] == 77
    assert ds_config(load_config("configs/tiny_cpu.yaml", ["parallel.zero_stage=0"]))["zero_optimization"] == {"stage": 0}


def test_shipped_h100_layouts_within_10_percent_of_the_planners_best():
    path = Path(__file__).parents[2] / "benchmarks" / "plan_shipped.py"
    spec = importlib.util.spec_from_file_location("plan_shipped", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for _size, cfg in mod.STAGES:
        for nodes in (8, 16):
            conf, best, limit = mod.compare(cfg, nodes)
            assert conf.total_gb <= limit and not conf.runnable, cfg
            assert conf.step_s <= 1.10 * best.step_s, (cfg, nodes, conf.step_s, best.step_s)
    assert mod.main(["--nodes", "8"]) == 0
