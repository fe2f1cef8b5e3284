"""Generators: shapes for every arch and scale, public key layouts, weights files and detection."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from superres.archs import GENERATORS, build_generator
from superres.archs.rrdbnet import convert_esrgan_trunk
from superres.inference.weights import WeightsError, detect_arch, load_generator, read_state_dict, save_weights

TINY = {"msrresnet": dict(num_feat=8, num_block=2), "rrdbnet": dict(num_feat=8, num_block=1, num_grow_ch=4),
        "compact": dict(num_feat=8, num_conv=2)}


@pytest.mark.parametrize("arch,scale", [(a, s) for a in GENERATORS for s in GENERATORS[a].scales])
def test_every_arch_and_scale_upscales_by_its_factor(arch, scale):
    model = build_generator(arch, upscale=scale, **TINY[arch]).eval()
    assert model.hparams["upscale"] == scale and model.hparams["num_feat"] == 8
    with torch.no_grad():
        y = model(torch.rand(2, 3, 12, 16))
    assert y.shape == (2, 3, 12 * scale, 16 * scale)


def test_compact_refuses_channel_counts_its_input_skip_cannot_add():
    with pytest.raises(ValueError, match=r"compact: num_in_ch=3 with num_out_ch=1; the input skip needs "
                                         r"num_in_ch == num_out_ch or num_in_ch == 1"):
        build_generator("compact", upscale=2, num_in_ch=3, num_out_ch=1, **TINY["compact"])
    gray_to_rgb = build_generator("compact", upscale=2, num_in_ch=1, num_out_ch=3, **TINY["compact"])
    with torch.no_grad():
        assert gray_to_rgb(torch.rand(1, 1, 5, 6)).shape == (1, 3, 10, 12)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        GENERATORS["msrresnet"].cls(3, 3, 64)   # noqa: the positional call must fail


def _public_rrdbnet_x4(num_feat=8, num_block=2, grow=4):
    """The key names and shapes of ESRGAN / Real-ESRGAN's RRDBNet x4 checkpoints, written out."""
    sd = {"conv_first.weight": (num_feat, 3, 3, 3), "conv_first.bias": (num_feat,)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin = num_feat + (c - 1) * grow
                cout = grow if c < 5 else num_feat
                sd[f"body.{b}.rdb{r}.conv{c}.weight"] = (cout, cin, 3, 3)
                sd[f"body.{b}.rdb{r}.conv{c}.bias"] = (cout,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    sd["conv_last.weight"], sd["conv_last.bias"] = (3, num_feat, 3, 3), (3,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


def _public_msrresnet_x4(num_feat=8, num_block=2):
    sd = {"conv_first.weight": (num_feat, 3, 3, 3), "conv_first.bias": (num_feat,)}
    for b in range(num_block):
        for c in (1, 2):
            sd[f"body.{b}.conv{c}.weight"], sd[f"body.{b}.conv{c}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    for name in ("upconv1", "upconv2"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (4 * num_feat, num_feat, 3, 3), (4 * num_feat,)
    sd["conv_hr.weight"], sd["conv_hr.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    sd["conv_last.weight"], sd["conv_last.bias"] = (3, num_feat, 3, 3), (3,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


def _public_compact_x4(num_feat=8, num_conv=2):
    """Real-ESRGAN's SRVGGNetCompact: convs and PReLUs in one `body` sequence."""
    sd = {"body.0.weight": (num_feat, 3, 3, 3), "body.0.bias": (num_feat,), "body.1.weight": (num_feat,)}
    i = 2
    for _ in range(num_conv):
        sd[f"body.{i}.weight"], sd[f"body.{i}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
        sd[f"body.{i + 1}.weight"] = (num_feat,)
        i += 2
    sd[f"body.{i}.weight"], sd[f"body.{i}.bias"] = (48, num_feat, 3, 3), (48,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


@pytest.mark.parametrize("arch,make,hp", [
    ("rrdbnet", _public_rrdbnet_x4, dict(num_feat=8, num_block=2, num_grow_ch=4)),
    ("msrresnet", _public_msrresnet_x4, dict(num_feat=8, num_block=2)),
    ("compact", _public_compact_x4, dict(num_feat=8, num_conv=2, act_type="prelu")),
])
def test_public_key_layouts_load_strictly_and_are_detected(arch, make, hp, tmp_path):
    sd = make()
    model = build_generator(arch, upscale=4, **hp)
    model.load_state_dict(sd, strict=True)   # the names and shapes of the public checkpoints
    found_arch, found_hp = detect_arch(sd)
    assert found_arch == arch and found_hp["upscale"] == 4 and found_hp["num_feat"] == 8
    # a BasicSR-style .pth (EMA weights under params_ema, DataParallel prefix) loads the same
    path = tmp_path / "net.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in sd.items()}, "iter": 5}, path)
    loaded, info = load_generator(path)
    assert info["arch"] == arch
    for k, v in sd.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_old_esrgan_names_are_converted():
    sd = _public_rrdbnet_x4(num_block=1)
    old = {}
    for k, v in sd.items():
        k2 = k.replace("body.0.rdb", "RRDB_trunk.0.RDB").replace("conv_body", "trunk_conv")
        k2 = k2.replace("conv_up1", "upconv1").replace("conv_up2", "upconv2").replace("conv_hr", "HRconv")
        old[k2] = v
    assert set(convert_esrgan_trunk(old)) == set(sd)


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    model = build_generator("msrresnet", upscale=3, **TINY["msrresnet"])
    path = tmp_path / "m.safetensors"
    save_weights(path, model, extra_metadata={"description": "test model", "metrics": {"psnr": 30.0}})
    loaded, info = load_generator(path)
    assert info["arch"] == "msrresnet" and info["scale"] == 3 and info["hparams"] == model.hparams
    assert info["metadata"]["description"] == "test model"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left its temp file behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask   # not mkstemp's 0600


def test_unknown_weights_say_what_was_found(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match="encoder.weight"):
        load_generator(path)


def test_pth_is_loaded_without_unpickling_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    with pytest.raises(WeightsError, match=r"evil.pth: a PyTorch checkpoint that holds more than tensors "
                                           r"\(loading it would run code from the file, which we never do\)") as e:
        read_state_dict(path)
    assert "weights_only=False" not in str(e.value)       # never suggest unsafe loading
    assert "pwned" not in capsys.readouterr().out


def test_one_pixel_image_upscales(tmp_path):
    from superres.inference.upscaler import Upscaler

    model = build_generator("msrresnet", upscale=4, **TINY["msrresnet"])
    up = Upscaler(model, {"arch": "msrresnet", "scale": 4}, precision="fp32", tile=0)
    out = up.upscale(np.full((1, 1, 3), 128, np.uint8))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8


# ---------------------------------------------------------------------------------------------
# detection round trip: every registry x scale x channels x activation variant

def _variants():
    channels = [(3, 3), (1, 1), (4, 4), (1, 3)]
    for arch, spec in GENERATORS.items():
        acts = ("prelu", "relu", "leakyrelu") if arch == "compact" else (None,)
        for scale in spec.scales:
            for cin, cout in channels:
                for act in acts:
                    hp = {**TINY[arch], "upscale": scale, "num_in_ch": cin, "num_out_ch": cout}
                    if act:
                        hp["act_type"] = act
                    yield pytest.param(arch, hp, id=f"{arch}-x{scale}-{cin}to{cout}" + (f"-{act}" if act else ""))


def _keys_weights_cannot_tell(arch, hp):
    """What must come from metadata or an explicit option, stated from the architectures' facts:
    RRDBNet's conv_first sees in * unshuffle^2 channels and a compact net's last conv has
    out * scale^2 outputs, so 4 and 16 each factor two ways into an image channel count and a
    scale; relu and leakyrelu have no weights."""
    if arch == "rrdbnet" and hp["num_in_ch"] * {4: 1, 2: 4, 1: 16}[hp["upscale"]] in (4, 16):
        return {"upscale", "num_in_ch"}
    if arch == "compact":
        keys = {"upscale", "num_out_ch"} if hp["num_out_ch"] * hp["upscale"] ** 2 in (4, 16) else set()
        return keys | ({"act_type"} if hp["act_type"] != "prelu" else set())
    return set()


@pytest.mark.parametrize("arch,hp", list(_variants()))
def test_detection_round_trip(arch, hp, tmp_path):
    torch.manual_seed(0)
    model = build_generator(arch, **hp)
    expected = dict(model.hparams)
    # ours: the metadata says everything
    save_weights(tmp_path / "m.safetensors", model)
    _, info = load_generator(tmp_path / "m.safetensors")
    assert (info["arch"], info["hparams"]) == (arch, expected)
    # metadata stripped (a bare state dict, as other tools save it): the keys alone
    torch.save(model.state_dict(), tmp_path / "m.pth")
    unknown = _keys_weights_cannot_tell(arch, hp)
    if unknown:
        with pytest.raises(WeightsError) as e:
            load_generator(tmp_path / "m.pth")
        for key in unknown:
            assert f"{key}: one of" in str(e.value)
        # only what must be passed is asked for: the channel count follows from the scale
        given = {k: expected[k] for k in unknown if k in ("upscale", "act_type")}
        asked = re.search(r"Pass (.*) explicitly", str(e.value))[1].split(" and ")
        assert sorted(asked) == sorted(given)
    given = {k: expected[k] for k in unknown if k in ("upscale", "act_type")}
    loaded, info = load_generator(tmp_path / "m.pth", hparams=given)
    assert (info["arch"], info["hparams"]) == (arch, expected)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_ambiguous_activation_error_names_the_option(tmp_path):
    model = build_generator("compact", upscale=4, act_type="leakyrelu", **TINY["compact"])
    torch.save(model.state_dict(), tmp_path / "m.pth")
    with pytest.raises(WeightsError, match=r"do not say act_type: act_type: one of \['relu', 'leakyrelu'\]"
                                           r".*Pass act_type explicitly: `--hparams act_type=relu` on the command "
                                           r"line, hparams=\{'act_type': 'relu'\}"):
        load_generator(tmp_path / "m.pth")
    # and an explicit value that contradicts our own metadata is refused, not applied
    save_weights(tmp_path / "m.safetensors", model)
    with pytest.raises(WeightsError, match=r"metadata says compact with act_type='leakyrelu'.*act_type='relu'"):
        load_generator(tmp_path / "m.safetensors", hparams={"act_type": "relu"})


# ---------------------------------------------------------------------------------------------
# community layouts of ESRGAN's RRDBNet x4

def _to_old_arch(sd: dict, num_block: int) -> dict:
    """Our RRDBNet x4 names -> the first ESRGAN release's sequential `model.N` names."""
    tail = {"conv_first.": "model.0.", "conv_body.": f"model.1.sub.{num_block}.", "conv_up1.": "model.3.",
            "conv_up2.": "model.6.", "conv_hr.": "model.8.", "conv_last.": "model.10."}
    out = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, b, rdb, conv, param = k.split(".")
            out[f"model.1.sub.{b}.RDB{rdb[-1]}.{conv}.0.{param}"] = v
        else:
            prefix = next(p for p in tail if k.startswith(p))
            out[tail[prefix] + k[len(prefix):]] = v
    return out


def test_old_esrgan_sequential_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = build_generator("rrdbnet", upscale=4, num_feat=8, num_block=2, num_grow_ch=4).eval()
    old = _to_old_arch(model.state_dict(), num_block=2)
    assert "model.1.sub.1.RDB3.conv5.0.weight" in old and "model.1.sub.2.weight" in old
    torch.save(old, tmp_path / "RRDB_ESRGAN_x4_old_arch.pth")
    loaded, info = load_generator(tmp_path / "RRDB_ESRGAN_x4_old_arch.pth")
    assert info["arch"] == "rrdbnet" and info["hparams"] == model.hparams
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_old_esrgan_layout_with_an_extra_key_is_refused(tmp_path):
    model = build_generator("rrdbnet", upscale=4, num_feat=8, num_block=1, num_grow_ch=4)
    old = _to_old_arch(model.state_dict(), num_block=1)
    old["model.1.sub.0.RDB1.extra.weight"] = torch.zeros(1)
    torch.save(old, tmp_path / "m.pth")
    with pytest.raises(WeightsError, match=r"unexpected key 'model\.1\.sub\.0\.RDB1\.extra\.weight'"):
        load_generator(tmp_path / "m.pth")


def test_old_esrgan_x2_layout_is_refused_with_the_reason(tmp_path):
    model = build_generator("rrdbnet", upscale=4, num_feat=8, num_block=1, num_grow_ch=4)
    old = _to_old_arch(model.state_dict(), num_block=1)
    # the x2 network has one upsampling step: HR conv at model.5, last conv at model.7
    x2 = {k.replace("model.8.", "model.5.").replace("model.10.", "model.7."): v for k, v in old.items()
          if not k.startswith("model.6.")}
    torch.save(x2, tmp_path / "m.pth")
    with pytest.raises(WeightsError, match=r"only the x4 layout \(model\.3, model\.6, model\.8, model\.10\)"):
        load_generator(tmp_path / "m.pth")


def test_esrgan_trunk_layout_loads_strictly(tmp_path):
    sd = _public_rrdbnet_x4(num_block=2)
    renames = [("body.", "RRDB_trunk."), ("conv_body.", "trunk_conv."), ("conv_up1.", "upconv1."),
               ("conv_up2.", "upconv2."), ("conv_hr.", "HRconv.")]
    old = {}
    for k, v in sd.items():
        for ours, theirs in renames:
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        old[k.replace(".rdb", ".RDB")] = v
    assert "RRDB_trunk.1.RDB2.conv3.weight" in old
    torch.save(old, tmp_path / "RRDB_ESRGAN_x4.pth")
    loaded, info = load_generator(tmp_path / "RRDB_ESRGAN_x4.pth")
    assert info["hparams"] == dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow_ch=4, upscale=4)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v)


# ---------------------------------------------------------------------------------------------
# training: every parameter learns, and a tiny net can overfit one batch

@pytest.mark.parametrize("arch,scale", [(a, s) for a in GENERATORS for s in GENERATORS[a].scales])
def test_backward_reaches_every_generator_parameter(arch, scale):
    torch.manual_seed(0)
    model = build_generator(arch, upscale=scale, **TINY[arch]).train()
    y = model(torch.rand(2, 3, 8, 8))
    # random weights on the output: a plain mean could cancel symmetric paths
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{arch} x{scale}: no gradient reaches {missing}"


@pytest.mark.parametrize("name,size", [("vgg128", 128), ("unet", 32), ("patchgan", 32)])
def test_backward_reaches_every_discriminator_parameter(name, size):
    from superres.archs import build_discriminator

    torch.manual_seed(0)
    disc = build_discriminator(name, num_feat=4).train()
    out = disc(torch.rand(2, 3, size, size))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in disc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient reaches {missing}"


def test_tiny_generator_overfits_one_batch():
    """50 Adam steps on one fixed batch must more than halve the L1 loss: a broken forward, a
    detached branch or a mismatched target layout would not. The HR targets are noise unrelated to
    the nearest-neighbour skip, so only memorisation by the convolutions can lower the loss."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny convs: threads only contend (and one thread is deterministic)
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, target = torch.rand(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)
        model = build_generator("compact", upscale=2, num_feat=16, num_conv=2)
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        losses = []
        for _ in range(50):
            loss = (model(x) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0], f"L1 {losses[0]:.4f} -> {losses[-1]:.4f}"


# ---------------------------------------------------------------------------------------------
# inference in row strips: the same numbers in less memory

def test_row_strips_equal_the_whole_call_when_the_halo_covers_the_receptive_field():
    from superres.archs.blocks import in_row_strips

    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(1, 1, 3, padding=1))
    x = torch.rand(1, 2, 23, 9)
    with torch.no_grad():
        whole = convs(x)
        # 1 row for the first conv + 1 output row of the second (half a row of x, rounded up)
        strips = in_row_strips(convs, x, scale=2, halo=2, channels=4, max_bytes=8 * 9 * 4 * 4)
        short = in_row_strips(convs, x, scale=2, halo=1, channels=4, max_bytes=8 * 9 * 4 * 4)
    assert strips.shape == whole.shape == (1, 1, 46, 18)
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6)
    # a halo short of the receptive field shows at the strip seams: the check above has teeth
    assert (short - whole).abs().max() > 1e-3


@pytest.mark.parametrize("arch,scale", [("msrresnet", 2), ("msrresnet", 3), ("msrresnet", 4),
                                        ("rrdbnet", 1), ("rrdbnet", 2), ("rrdbnet", 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tail_in_strips_matches_the_whole_tail(monkeypatch, arch, scale, channels_last):
    """Inference runs MSRResNet's and RRDBNet's tails (upsampling, conv_hr, conv_last) in row strips
    so a CPU tile's memory is LR-sized maps; with strips of a few rows the output must still be the
    whole-tail one, at every scale, in both memory layouts, and the strips must really be several."""
    from superres.archs import blocks

    torch.manual_seed(0)
    model = build_generator(arch, upscale=scale, **TINY[arch]).eval()
    x = torch.rand(1, 3, 36, 20)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():   # training mode of the forward: never in strips
        whole = model(x).detach()
    calls = []
    model.conv_last.register_forward_hook(lambda m, i, o: calls.append(o.shape[2]))
    monkeypatch.setattr(blocks, "STRIP_BYTES", 1)   # the fewest rows a strip may have
    with torch.no_grad():
        strips = model(x)
    assert len(calls) >= 3, calls
    assert strips.shape == whole.shape == (1, 3, 36 * scale, 20 * scale)
    assert strips.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-5)


def test_msrresnet_trains_and_exports_with_the_whole_tail(monkeypatch):
    """Strips are for eager inference only: with gradients on, or while tracing for ONNX, the tail
    runs whole (a traced graph would freeze one image's strip count into it)."""
    from superres.archs import blocks

    monkeypatch.setattr(blocks, "STRIP_BYTES", 1)
    model = build_generator("msrresnet", num_feat=8, num_block=1, upscale=4).eval()
    calls = []
    model.conv_last.register_forward_hook(lambda m, i, o: calls.append(o.shape[2]))
    model(torch.rand(1, 3, 24, 8))
    assert calls == [96]
    with torch.no_grad():   # what the ONNX export (superres.export, int8) traces
        program = torch.export.export(model, (torch.rand(1, 3, 24, 8),))
    convs = [n for n in program.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    # conv_first, two in the one residual block, upconv1, upconv2, conv_hr, conv_last: each once
    assert len(convs) == 7
