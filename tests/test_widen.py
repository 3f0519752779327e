"""tools.widen: a widened UNet computes exactly what the narrow one did."""

import pytest

torch = pytest.importorskip("torch")

from rawdenoise.errors import InputError  # noqa: E402
from rawdenoise.zoo.unet import UNet  # noqa: E402
from tools.widen import widen_unet_state  # noqa: E402


@pytest.mark.parametrize("depth", [1, 3])
def test_widened_unet_gives_the_narrow_output(depth):
    torch.manual_seed(0)
    narrow = UNet(width=8, depth=depth).double()
    wide = UNet(width=12, depth=depth).double()
    wide.load_state_dict(widen_unet_state(narrow.state_dict(), wide))
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=0, atol=1e-12)
    # the new channels are there and alive: their incoming weights are the fresh random ones
    assert wide.down[0][0].weight[8:].abs().sum() > 0


def test_new_channels_learn_from_the_first_step():
    torch.manual_seed(1)
    narrow = UNet(width=4, depth=1)
    wide = UNet(width=6, depth=1)
    wide.load_state_dict(widen_unet_state(narrow.state_dict(), wide))
    x = torch.randn(2, 4, 16, 16)
    (wide(x) - x).square().mean().backward()
    # the zero weights by which old channels read new ones get a gradient
    assert wide.head.weight.grad[:, 4:].abs().sum() > 0


def test_narrowing_or_another_depth_is_refused():
    with pytest.raises(InputError, match="at least the init"):
        widen_unet_state(UNet(width=8, depth=1).state_dict(), UNet(width=4, depth=1))
    with pytest.raises(InputError, match="differ in more than width"):
        widen_unet_state(UNet(width=4, depth=1).state_dict(), UNet(width=8, depth=2))
