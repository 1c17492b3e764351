"""Amortized pose prediction for ``cryopose predict``: one forward pass per particle.

:func:`predict_poses` applies a CryoPoseNet ``encoder.pt`` (``cryopose abinitio``) to particles,
seen or unseen in training; :func:`predict_poses_supervised` does the same with a checkpoint of
the supervised orientation regressor (Lian et al. 2022, ``model_kind: "supervised"``; ``cryopose
train-supervised`` / ``refine``), and :func:`read_model_file` tells the two kinds apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..conventions import shifts_pixels_to_angstrom
from ..data.dataset import ParticleDataset
from ..errors import UserError
from ..runtime import Runtime
from ..training.checkpoint import CHECKPOINT_FORMAT
from ..training.trainer import PoseInference, infer_poses
from .abinitio import ENCODER_FORMAT_KEYS, load_encoder, write_poses

__all__ = ["PREDICT_MODEL_KINDS", "inference_encoder", "predict_poses", "predict_poses_supervised", "read_model_file"]

#: Model files ``cryopose predict`` accepts: a CryoPoseNet ``encoder.pt`` (no ``model_kind`` key)
#: and a supervised regressor checkpoint (``model_kind: "supervised"``).
PREDICT_MODEL_KINDS = ("cryoposenet", "supervised")


def predict_poses(encoder: str | Path, particles: str | Path, output: str | Path, *,
                  pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                  batch_size: int = 256, int8: bool = False, progress: bool = True,
                  state: dict | None = None, datadir: str | Path | None = None,
                  runtime: Runtime | None = None, optics_group: int | str | None = None) -> PoseInference:
    """Amortized inference: poses of (unseen) particles from a trained ``encoder.pt``.

    The particles are Fourier-cropped to the encoder's working pixel size (their box times
    pixel size must give an integer working box) and normalised as in training; each image's
    candidate poses are scored against the trained volume (with its CTF and shifts when the
    file has them) and the best is written with its confidence.

    Args:
        encoder: ``encoder.pt`` from ``cryopose abinitio``.
        particles: ``.star``, ``.cs`` or ``.mrcs`` (+ ``ctf_star``).
        output: Output STAR path.
        pixel_size_angstrom, ctf_star, datadir, optics_group: As :func:`run_abinitio`.
        batch_size: Images per forward pass.
        int8: Run the encoder in 8-bit integers (:func:`inference_encoder`); the candidates
            are still scored in float against the volume.
        progress: Progress bar.
        state: The encoder file's contents when already loaded (:func:`read_model_file`).
        runtime: Device, precision and streaming (:class:`cryopose.runtime.Runtime`; default
            the CPU in float32, in memory when the particles fit): the encoder runs under the
            runtime's autocast, the candidates are scored in float32 on its device, and the
            particles are streamed through a ``DataLoader`` when they would not fit
            (:mod:`cryopose.data.streaming`). Under ``torchrun`` each rank poses its block of
            the particles and rank 0 writes the one STAR file, in the particles' order.

    Returns:
        :class:`PoseInference` (working-pixel shifts).

    Raises:
        UserError: Particles whose physical box does not match the encoder's working pixel size,
            or an output folder that does not exist.
        RuntimeError: ``int8`` on a PyTorch build without a quantized CPU engine
            (:func:`cryopose.models.quantize.quantize_int8`).
    """
    from ..data.streaming import dataset_source
    from ..io.particles import load_particles

    runtime = Runtime() if runtime is None else runtime
    if int8 and (runtime.device.type != "cpu" or runtime.precision != "32"):
        raise UserError("int8 inference runs on the CPU in 8-bit integers: use it with the CPU and precision 32")
    config, model, info = load_encoder(encoder, state=state)
    output = _check_output(output)
    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star,
                                 datadir=datadir, optics_group=optics_group)
    if meta.ctf is None:
        import sys

        print(f"cryopose predict: warning: {particles} has no CTF parameters (give a bare .mrcs its CTFs with "
              "--ctf STAR); the encoder's candidate poses are scored without a CTF", file=sys.stderr)
    p_work = info["working_pixel_size_angstrom"]
    m_float = stack.box_size * float(meta.pixel_size_angstrom) / p_work
    m = int(round(m_float))
    if abs(m - m_float) > 1e-3 * m_float or m != info["working_box_size"]:
        raise UserError(f"{particles}: {stack.box_size} px at {meta.pixel_size_angstrom:g} Å is a "
                        f"{stack.box_size * meta.pixel_size_angstrom:.1f} Å box; the encoder was trained on "
                        f"{info['working_box_size']} px at {p_work:g} Å "
                        f"({info['working_box_size'] * p_work:.1f} Å); the particles must have the same box in Å")
    images, cache_mb = dataset_source(stack, m, runtime)
    dataset = ParticleDataset(images, meta, box_size=m, invert=bool(config.invert_contrast),
                              normalization=info["normalization"], cache_limit_mb=cache_mb)
    if config.estimate_shifts and not meta.has_origins:
        # trained on centred particles (+ shift-head corrections): centre these the same way
        from ..data.preprocess import centre_particles

        centring = centre_particles(dataset, iterations=3, progress=progress)
        dataset.shifts_angstrom = shifts_pixels_to_angstrom(centring.shifts_px.double(), dataset.pixel_size_angstrom)
        meta = meta.replace(shifts_angstrom=dataset.shifts_angstrom.float())
    model.encoder = inference_encoder(model.encoder, dataset, int8=int8)
    model = model.to(runtime.device)
    inference = infer_poses(model, dataset, symmetric=config.training.symmetric_loss, batch_size=batch_size,
                            progress=progress and runtime.rank == 0, runtime=runtime)
    if info["frame_rotation"] is not None:  # abinitio --symmetry: the poses in its map's frame
        inference = dataclasses.replace(inference, rotmats=inference.rotmats.double() @ info["frame_rotation"])
    if runtime.rank == 0:  # under torchrun every rank holds every pose; one writes them
        write_poses(output, meta, inference, dataset.pixel_size_angstrom)
    return inference


def inference_encoder(encoder, dataset: ParticleDataset, *, int8: bool = False):
    """The copy of a CryoPoseNet encoder that :func:`predict_poses` runs on ``dataset``.

    Args:
        encoder: The trained :class:`cryopose.models.encoders.CryoPoseNetEncoder`.
        dataset: The particles to be posed, prepared as the encoder's inputs.
        int8: The int8 copy, calibrated on the first (up to) ``INT8_CALIBRATION_PARTICLES``
            images of ``dataset`` (:meth:`~cryopose.models.encoders.CryoPoseNetEncoder.quantized_for_inference`),
            instead of the float copy with batch norm folded (same poses, faster;
            :meth:`~cryopose.models.encoders.CryoPoseNetEncoder.fused_for_inference`).

    Returns:
        The encoder copy (eval mode); ``encoder`` is left unchanged.

    Raises:
        RuntimeError: ``int8`` on a PyTorch build without a quantized CPU engine.
    """
    if not int8:
        return encoder.fused_for_inference()
    from ..models.quantize import INT8_CALIBRATION_PARTICLES

    calibration = dataset.batch(np.arange(min(INT8_CALIBRATION_PARTICLES, len(dataset)))).images
    return encoder.quantized_for_inference(calibration)


def _check_output(output) -> Path:
    output = Path(output)
    if not output.parent.exists():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    return output


def read_model_file(path: str | Path) -> tuple[str, dict]:
    """Read a model file for ``cryopose predict`` once and say which kind it is.

    Args:
        path: A CryoPoseNet ``encoder.pt`` (``cryopose abinitio``; format tag
            :data:`~cryopose.training.checkpoint.CHECKPOINT_FORMAT`, the encoder keys, no
            ``model_kind``) or a supervised checkpoint (``model_kind: "supervised"``, written by
            :func:`cryopose.training.supervised.save_checkpoint`).

    Returns:
        ``(kind, state)``: ``kind`` one of :data:`PREDICT_MODEL_KINDS`, ``state`` the loaded dict
        (CPU tensors).

    Raises:
        InputFileError: Missing or unreadable file, one that ``weights_only`` loading refuses
            (it could run code: :func:`cryopose.training.checkpoint.read_torch_file`), or a kind
            ``predict`` cannot use (the message names the file, its ``model_kind`` and the kinds
            accepted).
    """
    from ..errors import InputFileError
    from ..training.checkpoint import checkpoint_format, read_torch_file

    path = Path(path)
    state = read_torch_file(path, "model file")
    kind = state.get("model_kind") if isinstance(state, dict) else None
    if kind is None and checkpoint_format(state) == CHECKPOINT_FORMAT and all(k in state for k in ENCODER_FORMAT_KEYS):
        kind = "cryoposenet"
    if kind not in PREDICT_MODEL_KINDS:
        what = f"model_kind {kind!r}" if kind is not None else "neither a model_kind nor a CryoPoseNet encoder"
        raise InputFileError(path, f"{what}: `cryopose predict` accepts a CryoPoseNet encoder.pt "
                                   "(`cryopose abinitio`) or a model_kind 'supervised' model.pt "
                                   "(`cryopose train-supervised` or `cryopose refine`)")
    return kind, state


def _supervised_invert_contrast(model: str | Path, state: dict, requested: bool | None) -> bool:
    """The contrast setting to predict with from a supervised checkpoint.

    Args:
        model: The checkpoint's path (named in errors).
        state: Its contents; ``state["extra"]["invert_contrast"]`` (bool) when recorded.
        requested: The caller's setting, or ``None`` for none.

    Returns:
        The recorded setting when there is one, else ``bool(requested)`` (``False`` for
        ``None``: an older checkpoint without the key, trained on images as they are unless
        the user says otherwise).

    Raises:
        UserError: ``requested`` is a bool that contradicts the recorded setting.
    """
    extra = state.get("extra")
    recorded = extra.get("invert_contrast") if isinstance(extra, dict) else None
    if recorded is None:
        return bool(requested)
    recorded = bool(recorded)
    if requested is not None and bool(requested) != recorded:
        how = "with" if recorded else "without"
        asked = "--invert-contrast" if requested else "no contrast inversion"
        raise UserError(f"{model}: the network was trained {how} --invert-contrast, as the checkpoint records "
                        f"and predict applies by itself; {asked} was asked for, which contradicts it: "
                        "leave --invert-contrast out (invert_contrast=None) to use the recorded setting")
    return recorded


def predict_poses_supervised(model: str | Path, particles: str | Path, output: str | Path, *,
                             pixel_size_angstrom: float | None = None, ctf_star: str | Path | None = None,
                             batch_size: int = 256, invert_contrast: bool | None = None,
                             test_time_turns: bool = False, int8: bool = False,
                             state: dict | None = None, datadir: str | Path | None = None,
                             runtime: Runtime | None = None, optics_group: int | str | None = None) -> torch.Tensor:
    """Orientations of particles from a supervised regressor (Lian et al. 2022); writes a STAR.

    Each image is Fourier-cropped to the network's input box (same field of view; as
    ``cryopose refine`` infers its unlabelled particles:
    :class:`cryopose.search.run.ResampledImages` and
    :func:`cryopose.training.supervised.predict_rotmats`, one forward pass per batch, read
    lazily). The network predicts no shifts and no CTF is used: the output (RELION 3.1, the
    input's particle order and pixel size, as :func:`write_poses`) has the predicted
    ``rlnAngleRot/Tilt/Psi`` and the input's origins, and no confidence column.

    Args:
        model: ``model.pt`` with ``model_kind: "supervised"`` (named in errors).
        particles: ``.star``, ``.cs`` or ``.mrcs`` (+ ``ctf_star``).
        output: Output STAR path (its folder must exist).
        pixel_size_angstrom, ctf_star, datadir, optics_group: As :func:`cryopose.io.particles.load_particles`.
        batch_size: Images per forward pass.
        invert_contrast: Negate the images first. ``None`` (default): as the checkpoint
            records (``extra["invert_contrast"]``, written by ``train-supervised`` and
            ``refine``), or not at all for an older checkpoint without that key. A bool
            overrides only such an older checkpoint; for one that records the setting it must
            agree with it.
        test_time_turns: Average each particle's predictions for its four quarter turns modulo
            the checkpoint's point group
            (:meth:`cryopose.models.supervised.OrientationRegressor.predict_rotmat`; 4 × the time).
        int8: Run the network in 8-bit integers, calibrated on the first (up to)
            ``INT8_CALIBRATION_PARTICLES`` particles
            (:meth:`cryopose.models.supervised.OrientationRegressor.quantized_for_inference`).
        state: The checkpoint's contents when already loaded (:func:`read_model_file`).
        runtime: The device the network runs on (:class:`cryopose.runtime.Runtime`; default
            the CPU; ``int8`` needs the CPU).

    Returns:
        ``(N, 3, 3)`` float32 predicted RELION rotation matrices, in the particles' order.

    Raises:
        InputFileError: Not a supervised checkpoint, or one whose network cannot be rebuilt.
        UserError: Particles whose box in Å differs from the network's (when the checkpoint
            records its pixel size), images smaller than the network's box, an
            ``invert_contrast`` that contradicts the checkpoint's recorded setting (the message
            names ``model``), or a missing output folder.
        RuntimeError: ``int8`` on a PyTorch build without a quantized CPU engine
            (:func:`cryopose.models.quantize.quantize_int8`).
    """
    from ..io.particles import load_particles
    from ..io.star import write_star
    from ..models.supervised import INT8_CALIBRATION_PARTICLES
    from ..search.run import ResampledImages
    from ..training.supervised import predict_rotmats

    net, state = _load_supervised_network(model, state)
    invert = _supervised_invert_contrast(model, state, invert_contrast)
    output = _check_output(output)
    stack, meta = load_particles(particles, pixel_size_angstrom=pixel_size_angstrom, ctf_star=ctf_star,
                                 datadir=datadir, optics_group=optics_group)
    m = net.config.box_size
    _check_network_box(model, particles, int(stack.box_size), float(meta.pixel_size_angstrom), m,
                       state.get("pixel_size_angstrom"))
    images = ResampledImages(stack, m, invert_contrast=invert)
    if int8:
        net = net.quantized_for_inference(images[np.arange(min(INT8_CALIBRATION_PARTICLES, len(images)))])
    if not int8:
        net = net.to((Runtime() if runtime is None else runtime).device)
    rot = predict_rotmats(net, images, batch_size=batch_size,
                          test_time_turns=test_time_turns, symmetry=state.get("symmetry", "C1"))
    write_star(output, meta.replace(rotmats=rot.float()))
    return rot.float()


def _load_supervised_network(model: str | Path, state: dict | None):
    """The supervised regressor of checkpoint ``model`` (read unless ``state`` is given) and the
    checkpoint's contents; ``InputFileError`` (naming ``model``) for another model kind or a
    network that cannot be rebuilt."""
    from ..errors import InputFileError
    from ..models.supervised import MODEL_KIND, OrientationRegressor, SupervisedModelConfig

    if state is None:
        kind, state = read_model_file(model)
        if kind != MODEL_KIND:
            raise InputFileError(model, f"a {kind} model, not a model_kind {MODEL_KIND!r} checkpoint")
    try:
        net = OrientationRegressor(SupervisedModelConfig(**state["model_config"]))
        net.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputFileError(model, f"cannot rebuild the supervised network ({type(err).__name__}: {err})") from None
    return net, state


def _check_network_box(model, particles, n: int, apix: float, m: int, p_net: float | None) -> None:
    """``UserError`` unless ``n`` px images at ``apix`` Å have the network's box in Å (``m`` px at
    ``p_net`` Å, when the checkpoint records it) and are at least ``m`` px."""
    if p_net is not None and abs(n * apix - m * p_net) > 1e-3 * m * p_net:
        raise UserError(f"{particles}: {n} px at {apix:g} Å is a {n * apix:.1f} Å box; the network in {model} "
                        f"was trained on {m} px at {p_net:g} Å ({m * p_net:.1f} Å); the particles must have the "
                        "same box in Å")
    if n < m:
        raise UserError(f"{particles}: {n} px images are smaller than the {m} px input of the network in {model}")
