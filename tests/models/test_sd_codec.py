"""The pixel-unshuffle latent codec: torch's channel order, lossless, its on-disk config."""
import numpy as np
import pytest

from pmg_models.sd import codec


@pytest.mark.parity
def test_codec_is_pixel_unshuffle_and_lossless():
    torch = pytest.importorskip("torch")
    from pmg_models import runtime

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    z = codec.encode_numpy(images)
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    ref = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(z, ref)
    cell = codec.PixelUnshuffleCodec()
    np.testing.assert_array_equal(runtime.to_numpy(cell.encode(runtime.to_tensor(x))), ref)
    np.testing.assert_array_equal(runtime.to_numpy(cell.decode(runtime.to_tensor(z))), x)
    cfg = cell.config
    assert 2 ** (len(cfg.block_out_channels) - 1) == 2 and cfg.latent_channels == 12
    assert codec.CodecConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not a PixelUnshuffleCodec"):
        codec.CodecConfig.from_dict({"_class_name": "AutoencoderKL"})
