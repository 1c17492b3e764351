"""Contrast transfer function (CTF) from RELION parameters, in torch.

``CTF(k) = sin(χ(k)) · exp(−B |k|² / 4)`` with

``χ(k) = π λ Δf(θ) |k|² − (π/2) Cs λ³ |k|⁴ + φ + arcsin(w)``,
``Δf(θ) = (Δu + Δv)/2 + (Δu − Δv)/2 · cos(2 (θ − α))``,

``k`` in cycles/Å, ``θ = atan2(ky, kx)``, ``λ`` the electron wavelength (Å), ``Cs`` in Å,
``w`` the amplitude contrast, ``φ`` the phase shift, ``α`` the astigmatism angle. This equals
RELION 3.1's ``CTF::getCTF`` (``-sin(K1 Δf' k² + K2 k⁴ − K5 − K3)`` with ``Δf' = −Δf``,
``K3 = atan(w / sqrt(1 − w²)) = arcsin(w)``) and is positive at low frequency; the sign is
checked against ``relion_project --ctf`` in ``tests/oracle``. Defocus is differentiable.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .constants import ELECTRON_REST_ENERGY_EV, HC_EV_ANGSTROM
from .fourier import centered_fft2, centered_ifft2, frequency_grid_2d

__all__ = ["CTFParams", "compute_ctf", "electron_wavelengths_angstrom", "phase_flip", "phase_flip_images",
           "wiener_filter"]


def _field(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(np.asarray(t, dtype=np.float32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CTFParams:
    """Per-particle CTF parameters (RELION/CTFFIND conventions), each a tensor of shape ``(N,)``.

    Attributes:
        defocus_u_angstrom: Defocus along the major axis, Å, positive = underfocus.
        defocus_v_angstrom: Defocus along the minor axis, Å (``<= defocus_u`` by convention).
        defocus_angle_deg: Astigmatism angle of the ``u`` axis from the image x axis, degrees.
        voltage_kv: Acceleration voltage, kV.
        spherical_aberration_mm: Cs, mm.
        amplitude_contrast: Amplitude contrast ratio ``w`` in [0, 1).
        phase_shift_deg: Phase-plate phase shift, degrees.
        bfactor_angstrom2: CTF B-factor envelope ``exp(−B k²/4)``, Å² (0 = none).
    """

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_deg: torch.Tensor
    voltage_kv: torch.Tensor
    spherical_aberration_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_deg: torch.Tensor
    bfactor_angstrom2: torch.Tensor

    @classmethod
    def create(cls, *, defocus_u_angstrom, defocus_v_angstrom=None, defocus_angle_deg=0.0,
               voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.1,
               phase_shift_deg=0.0, bfactor_angstrom2=0.0) -> "CTFParams":
        """Build parameters from scalars or arrays, broadcasting everything to ``(N,)``.

        Raises:
            ValueError: If a value is not finite, voltage is not positive, or the amplitude
                contrast is outside [0, 1).
        """
        du = torch.atleast_1d(_field(defocus_u_angstrom))
        dv = du if defocus_v_angstrom is None else torch.atleast_1d(_field(defocus_v_angstrom))
        vals = dict(defocus_u_angstrom=du, defocus_v_angstrom=dv, defocus_angle_deg=defocus_angle_deg,
                    voltage_kv=voltage_kv, spherical_aberration_mm=spherical_aberration_mm,
                    amplitude_contrast=amplitude_contrast, phase_shift_deg=phase_shift_deg,
                    bfactor_angstrom2=bfactor_angstrom2)
        dtype = du.dtype if du.is_floating_point() else torch.float32
        tensors = {k: torch.atleast_1d(_field(v)).to(dtype) for k, v in vals.items()}
        n = max(t.shape[0] for t in tensors.values())
        out = {}
        for k, t in tensors.items():
            if t.shape[0] not in (1, n):
                raise ValueError(f"CTF parameter {k} has {t.shape[0]} values, expected 1 or {n}")
            if not torch.isfinite(t).all():
                raise ValueError(f"CTF parameter {k} has non-finite values")
            out[k] = t.expand(n).clone() if t.shape[0] == 1 else t
        if (out["voltage_kv"] <= 0).any():
            raise ValueError("CTF parameter voltage_kv must be positive")
        if ((out["amplitude_contrast"] < 0) | (out["amplitude_contrast"] >= 1)).any():
            raise ValueError("CTF parameter amplitude_contrast must be in [0, 1)")
        return cls(**out)

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def __getitem__(self, index) -> "CTFParams":
        """Select particles with an int, slice, index tensor or boolean mask."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def to(self, device) -> "CTFParams":
        """Move every field to ``device``."""
        return CTFParams(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    @staticmethod
    def concatenate(parts: list["CTFParams"]) -> "CTFParams":
        """Concatenate several parameter sets along the particle axis."""
        return CTFParams(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                            for f in dataclasses.fields(CTFParams)})


def compute_ctf(params: CTFParams, box_size: int, pixel_size_angstrom: float, *,
                device=None) -> torch.Tensor:
    """Evaluate the CTF on the centred Fourier grid of ``box_size`` images.

    Args:
        params: ``N`` particles' parameters.
        box_size: Image edge ``n`` in pixels.
        pixel_size_angstrom: Pixel size in Å/px.
        device: Device of the output (defaults to that of ``params``).

    Returns:
        Real tensor ``(N, n, n)``, DC at ``[n//2, n//2]`` (layout of
        :func:`cryopose.fourier.centered_fft2`). Differentiable in the defocus fields.
    """
    device = device or params.defocus_u_angstrom.device
    dtype = params.defocus_u_angstrom.dtype
    ky, kx = frequency_grid_2d(box_size, pixel_size_angstrom, device=device, dtype=dtype)
    k2 = (kx**2 + ky**2)[None]
    theta = torch.atan2(ky, kx)[None]

    def col(t):
        return t.to(device)[:, None, None]

    lam = electron_wavelengths_angstrom(params.voltage_kv.to(device)).to(dtype)[:, None, None]
    du, dv = col(params.defocus_u_angstrom), col(params.defocus_v_angstrom)
    alpha = torch.deg2rad(col(params.defocus_angle_deg))
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (theta - alpha))
    cs = col(params.spherical_aberration_mm) * 1e7
    w = col(params.amplitude_contrast)
    phase = torch.deg2rad(col(params.phase_shift_deg))
    chi = math.pi * lam * defocus * k2 - 0.5 * math.pi * cs * lam**3 * k2**2 + phase + torch.asin(w)
    ctf = torch.sin(chi)
    b = col(params.bfactor_angstrom2)
    if bool((b != 0).any()):
        ctf = ctf * torch.exp(-b * k2 / 4.0)
    return ctf


def electron_wavelengths_angstrom(voltage_kv: torch.Tensor) -> torch.Tensor:
    """Vectorised :func:`cryopose.constants.electron_wavelength_angstrom` (kV in, Å out)."""
    e = voltage_kv.double() * 1e3
    return (HC_EV_ANGSTROM / torch.sqrt(e * (e + 2 * ELECTRON_REST_ENERGY_EV))).float()


def phase_flip(images_ft: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Phase-flip centred image transforms: multiply by ``sign(CTF)``.

    Args:
        images_ft: ``(N, n, n)`` complex centred transforms.
        ctf: ``(N, n, n)`` CTF values (:func:`compute_ctf`).
    """
    return images_ft * torch.sign(ctf)


def phase_flip_images(images: torch.Tensor, params: "CTFParams", pixel_size_angstrom: float, *,
                      batch_size: int = 1024) -> torch.Tensor:
    """Phase-flip real-space particle images: ``F⁻¹[F[x] · sign(CTF)]``, batched.

    The contrast of every Fourier component then has the sign it would have without a CTF,
    whatever the defocus, while the noise stays white (``|sign| = 1``): the usual first CTF
    correction before 2D analysis (SPIDER/EMAN ``phase flipping``; RELION's
    ``--ctf_phase_flipped``), used here on the input of the supervised regressor.

    Args:
        images: ``(N, n, n)`` real images, the particle at the box centre.
        params: The ``N`` particles' CTF parameters.
        pixel_size_angstrom: Pixel size of ``images`` (Å/px).
        batch_size: Images transformed at a time (bounds the memory of the complex copies).

    Returns:
        ``(N, n, n)`` float32 phase-flipped images.

    Raises:
        ValueError: If ``images`` is not ``(N, n, n)`` or ``params`` has not ``N`` entries.
    """
    x = torch.as_tensor(images)
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"phase_flip_images: images must be (N, n, n), got {tuple(x.shape)}")
    if len(params) != x.shape[0]:
        raise ValueError(f"phase_flip_images: {x.shape[0]} images but CTF parameters for {len(params)}")
    n = int(x.shape[-1])
    out = torch.empty(x.shape, dtype=torch.float32)
    for s in range(0, x.shape[0], batch_size):
        idx = torch.arange(s, min(s + batch_size, x.shape[0]))
        ctf = compute_ctf(params[idx], n, pixel_size_angstrom, device=x.device)
        out[s:s + idx.numel()] = centered_ifft2(phase_flip(centered_fft2(x[s:s + idx.numel()].float()), ctf)).real.cpu()
    return out


def wiener_filter(images_ft: torch.Tensor, ctf: torch.Tensor, snr: float | torch.Tensor) -> torch.Tensor:
    """Wiener-filter centred image transforms: ``X · CTF / (CTF² + 1/SNR)``.

    Args:
        images_ft: ``(N, n, n)`` complex centred transforms.
        ctf: ``(N, n, n)`` CTF values.
        snr: Signal-to-noise ratio (scalar or broadcastable per frequency), > 0.

    Raises:
        ValueError: If ``snr`` is not positive.
    """
    snr_t = torch.as_tensor(snr, dtype=ctf.dtype, device=ctf.device)
    if (snr_t <= 0).any():
        raise ValueError(f"wiener_filter: snr must be positive, got {snr}")
    return images_ft * ctf / (ctf**2 + 1.0 / snr_t)
