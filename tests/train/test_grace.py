"""The preemption grace check (train/preemption.py): a step plus a save longer than
checkpoint.grace_s is warned about once, with the numbers and the knob; a signal's log line
says what a stop costs."""
import logging
import os
import signal

from hydra_dist.train.preemption import PreemptionFlag


def test_overrun_warned_once_and_signal_line_states_the_cost(caplog):
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    try:
        with caplog.at_level(logging.WARNING, logger="hydra_dist"):
            flag = PreemptionFlag(grace_s=10)
            assert not flag.note_save(step_s=2.0, save_s=7.5)
            assert not caplog.records
            assert flag.note_save(step_s=4.0, save_s=7.0)
            assert flag.note_save(step_s=4.0, save_s=8.0)  # still over, but said once
            over = [r.getMessage() for r in caplog.records]
            assert len(over) == 1
            assert "a step (4.0 s) plus a checkpoint save (7.0 s)" in over[0]
            assert "checkpoint.grace_s = 10 s" in over[0] and "--signal=B:USR1@N" in over[0]
            os.kill(os.getpid(), signal.SIGUSR2)
            assert flag.raised == "SIGUSR2"
            assert "(grace 10 s; a step and a save took 12 s)" in caplog.records[-1].getMessage()
        assert not PreemptionFlag(grace_s=0).note_save(1e6, 1e6)  # 0: not checked
    finally:
        for s, h in old.items():
            signal.signal(s, h)
