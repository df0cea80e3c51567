import pytest
import torch


@pytest.fixture
def crash_in_second_epoch(monkeypatch):
    """Training runs raise KeyboardInterrupt at the fourth step of their second epoch (an interruption mid-epoch);
    returns a function that lifts it."""
    from stm_lab.training import engine
    step = engine.Run.step

    def crash(self, x, y, global_step):
        if global_step == self.steps_per_epoch + 3:
            raise KeyboardInterrupt
        return step(self, x, y, global_step)
    monkeypatch.setattr(engine.Run, 'step', crash)
    return lambda: monkeypatch.setattr(engine.Run, 'step', step)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (timings and kernels that vary with the thread count), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
