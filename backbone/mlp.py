"""``mnistmlp``: Mammoth's MLP for 28x28 digits (784-100-100 features, then the classifier)."""
from __future__ import annotations

from torch import nn

from backbone import ContinualBackbone, Limits, register


@register("mnistmlp", "mlp", limits=Limits(minimum={"hidden_size": 1}))
def mnistmlp(num_classes: int, img_size: int = 28, in_chans: int = 1, hidden_size: int = 100) -> ContinualBackbone:
    """Flatten the image, two ReLU layers of ``--hidden_size`` units, then a linear classifier."""
    input_size = in_chans * img_size * img_size
    body = nn.Sequential(nn.Flatten(), nn.Linear(input_size, hidden_size), nn.ReLU(),
                         nn.Linear(hidden_size, hidden_size), nn.ReLU())
    return ContinualBackbone(body, hidden_size, num_classes)
