"""One profile definition (stm_lab.profiles) that every part reads: known answers for what each profile means, and
the parts agree with it."""
import pytest

from stm_lab import profiles
from stm_lab.profiles import PROFILES


def test_the_cpu_profile_is_the_committed_setting():
    cpu = PROFILES['cpu']
    assert (cpu.dataset, cpu.img_size, cpu.scale, cpu.epochs, cpu.seed_epochs) == ('imagenette', 64, 'micro', 22, 12)
    assert cpu.models == ('u_halonet_micro', 'u_pvt_micro', 'u_swin_micro', 'u_dwconv_micro', 'u_internimage_micro')
    assert cpu.seed_dir(0) == 'epochs12' and cpu.seed_dir(3) == 'seed3'
    assert PROFILES['paper'].models[:5] == cpu.models and len(PROFILES['paper'].models) == 20  # Table III


def test_unknown_profiles_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown profile 'gpu'; valid: smoke, cpu, paper"):
        profiles.get('gpu')
    with pytest.raises(ValueError, match='valid: smoke, cpu$'):
        profiles.get('paper', among=profiles.ANALYSIS_PROFILES)
    assert profiles.get('cpu/epochs24') is PROFILES['cpu']  # a results sub-folder names its profile


def test_training_detection_and_the_parsers_read_the_profile():
    from stm_lab.detection.train import profile_config as detection_config
    from stm_lab.parsers import PROFILE_HELP, PROFILES as CHOICES
    from stm_lab.training.config import profile_config
    for name, prof in PROFILES.items():
        cfg = profile_config(prof.models[0], name)
        assert (cfg.epochs, cfg.data.dataset, cfg.data.img_size) == (prof.epochs, prof.dataset, prof.img_size), name
        det = detection_config(prof.models[0], name)
        assert det.epochs == prof.detection['epochs'] and det.detector.img_size == prof.detection['detector']['img_size']
        assert PROFILE_HELP[name].endswith(prof.help)
    assert CHOICES == tuple(PROFILES)
    # the derived schedule: warm-up 20/300 of the run, unless the profile fixes it (paper: Table IV exactly)
    assert profile_config('u_swin_micro', 'cpu').warmup_epochs == round(22 * 20 / 300, 2)
    assert profile_config('u_swin_micro', 'paper').warmup_epochs == 20
    assert profile_config('u_swin_test', 'smoke').ema_decay == 0.9  # the profile's own value wins
