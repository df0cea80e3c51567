"""Identity mixer: no spatial mixing at all. A lower bound that isolates what the rest of the unified
architecture (stem, overlapping transitions, MLPs, head) achieves without any token mixing."""
from .base import TokenMixer
from . import register_mixer


@register_mixer('identity')
class IdentityMixer(TokenMixer):
    """Returns its input unchanged: no spatial mixing (module docstring)."""
    uses_heads = False
    recipe, display_name, color = 'cnn', 'Identity', '#7f7f7f'  # a lower bound of U-DWConv's layout

    def forward(self, x):
        return x
