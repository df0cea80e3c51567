import pytest


@pytest.fixture
def crash_in_second_epoch(monkeypatch):
    """Training runs raise KeyboardInterrupt at the fourth step of their second epoch (an interruption mid-epoch);
    returns a function that lifts it."""
    from stm_lab import train
    step = train.Run.step

    def crash(self, x, y, global_step):
        if global_step == self.steps_per_epoch + 3:
            raise KeyboardInterrupt
        return step(self, x, y, global_step)
    monkeypatch.setattr(train.Run, 'step', crash)
    return lambda: monkeypatch.setattr(train.Run, 'step', step)
