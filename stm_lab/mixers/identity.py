"""Identity mixer: no spatial mixing at all. A lower bound that isolates what the rest of the unified
architecture (stem, overlapping transitions, MLPs, head) achieves without any token mixing."""
from .base import TokenMixer
from . import register_mixer


@register_mixer('identity')
class IdentityMixer(TokenMixer):
    uses_heads = False

    def forward(self, x):
        return x
