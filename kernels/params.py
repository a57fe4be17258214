"""Plain, frozen parameter objects for every stage of the mastering chain.

These are the vocabulary shared by the kernels, the presets (TOML tables in
``jobs/`` map one-to-one onto these fields) and the render. Units are in the
names: ``_db`` decibels, ``_dbtp`` decibels true peak, ``_lufs`` loudness
units full scale, ``_lu`` loudness units, ``_hz`` hertz, ``_ms``/``_s`` time.
Validation lives in ``__post_init__`` and raises ``ValueError`` naming the
field and what is allowed, so a preset error reads as a fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

EQ_KINDS = ("bell", "low_shelf", "high_shelf", "high_pass", "low_pass")
REVERB_TYPES = ("room", "plate", "hall")
TAIL_MODES = ("trim", "keep")
OVERSAMPLE_FACTORS = (1, 2, 4, 8, 16)
BIT_DEPTHS = (16, 24)
NOISE_SHAPES = ("none", "lipshitz")


def _check(cond: bool, name: str, allowed: str, value) -> None:
    if not cond:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class EQBand:
    """One parametric band of the linear-phase EQ.

    ``bell``: peak/dip of ``gain_db`` at ``freq_hz`` with bandwidth ``q``.
    ``low_shelf``/``high_shelf``: ``gain_db`` below/above ``freq_hz`` (the
    half-gain point), transition steepness ``q`` (0.707 = Butterworth-like).
    ``high_pass``/``low_pass``: Butterworth magnitude with
    ``slope_db_per_oct`` (6, 12, ..., 96) cutting below/above ``freq_hz``.
    """

    kind: str
    freq_hz: float
    gain_db: float = 0.0
    q: float = 0.707
    slope_db_per_oct: float = 12.0

    def __post_init__(self):
        _check(self.kind in EQ_KINDS, "eq band kind", f"one of {EQ_KINDS}", self.kind)
        _check(1.0 <= self.freq_hz <= 100_000.0, "eq band freq_hz", "between 1 and 100000 Hz", self.freq_hz)
        _check(-36.0 <= self.gain_db <= 36.0, "eq band gain_db", "between -36 and +36 dB", self.gain_db)
        _check(0.05 <= self.q <= 50.0, "eq band q", "between 0.05 and 50", self.q)
        slope = self.slope_db_per_oct
        _check(6 <= slope <= 96 and float(slope) % 6 == 0, "eq band slope_db_per_oct",
               "a multiple of 6 from 6 to 96", slope)


@dataclass(frozen=True)
class EQParams:
    """Linear-phase EQ: the product of its bands' magnitudes, zero phase.

    ``taps`` (odd) sets the FIR length; ``None`` sizes it for < 0.1 dB
    magnitude error above 30 Hz at the track's sample rate.
    """

    bands: tuple[EQBand, ...] = ()
    taps: int | None = None
    bypass: bool = False

    def __post_init__(self):
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.taps is not None:
            _check(isinstance(self.taps, int) and self.taps >= 3 and self.taps % 2 == 1,
                   "eq taps", "an odd integer >= 3 (or omitted for automatic sizing)", self.taps)


@dataclass(frozen=True)
class ReverbParams:
    """Convolution reverb "glue".

    ``ir`` is a built-in synthetic space (``room``, ``plate``, ``hall``) or a
    path to an impulse-response file (loaded by the render, resampled to the
    track's rate). ``decay_s`` overrides the synthetic space's mid-band RT60.
    ``wet_db``/``dry_db`` are the gains of the reverberant and direct paths.
    ``tail``: ``trim`` keeps the input's length (fading the tail out over
    ``fade_ms``), ``keep`` lets the tail ring out after the end.
    """

    ir: str = "plate"
    decay_s: float | None = None
    predelay_ms: float = 0.0
    wet_db: float = -24.0
    dry_db: float = 0.0
    tail: str = "trim"
    fade_ms: float = 50.0
    seed: int = 0
    bypass: bool = False

    def __post_init__(self):
        _check(isinstance(self.ir, str) and self.ir != "", "reverb ir",
               f"one of {REVERB_TYPES} or a path to an impulse-response file", self.ir)
        if self.decay_s is not None:
            _check(0.05 <= self.decay_s <= 20.0, "reverb decay_s", "between 0.05 and 20 s", self.decay_s)
        _check(0.0 <= self.predelay_ms <= 500.0, "reverb predelay_ms", "between 0 and 500 ms", self.predelay_ms)
        _check(-120.0 <= self.wet_db <= 12.0, "reverb wet_db", "between -120 and +12 dB", self.wet_db)
        _check(-120.0 <= self.dry_db <= 12.0, "reverb dry_db", "between -120 and +12 dB", self.dry_db)
        _check(self.tail in TAIL_MODES, "reverb tail", f"one of {TAIL_MODES}", self.tail)
        _check(0.0 <= self.fade_ms <= 10_000.0, "reverb fade_ms", "between 0 and 10000 ms", self.fade_ms)

    @property
    def is_builtin(self) -> bool:
        return self.ir in REVERB_TYPES


@dataclass(frozen=True)
class LimiterParams:
    """True-peak lookahead limiter.

    Peaks are detected on the signal oversampled ``oversample`` times, the
    gain ramps down smoothly over ``lookahead_ms`` before a peak and recovers
    exponentially (in dB) with time constant ``release_ms``. After it runs
    the output's true peak is <= ``ceiling_dbtp``.
    """

    ceiling_dbtp: float = -1.0
    lookahead_ms: float = 2.0
    release_ms: float = 100.0
    oversample: int = 4
    bypass: bool = False

    def __post_init__(self):
        _check(-30.0 <= self.ceiling_dbtp <= 0.0, "limiter ceiling_dbtp", "between -30 and 0 dBTP", self.ceiling_dbtp)
        _check(0.1 <= self.lookahead_ms <= 50.0, "limiter lookahead_ms", "between 0.1 and 50 ms", self.lookahead_ms)
        _check(1.0 <= self.release_ms <= 5000.0, "limiter release_ms", "between 1 and 5000 ms", self.release_ms)
        _check(self.oversample in (4, 8, 16), "limiter oversample", "4, 8 or 16", self.oversample)


@dataclass(frozen=True)
class LoudnessParams:
    """Loudness target met by a static gain plus the limiter.

    ``target_lufs`` is the integrated loudness (BS.1770-4) to land within
    ``tolerance_lu``; ``None`` applies no gain. ``max_gain_reduction_db``
    caps how hard the limiter may work (its deepest gain reduction) to get
    there: if the target needs more, the chain reports that it cannot be
    reached instead of crushing the track.
    """

    target_lufs: float | None = -14.0
    tolerance_lu: float = 0.1
    max_gain_reduction_db: float = 12.0
    max_passes: int = 6
    bypass: bool = False

    def __post_init__(self):
        if self.target_lufs is not None:
            _check(-70.0 <= self.target_lufs <= 0.0, "loudness target_lufs", "between -70 and 0 LUFS", self.target_lufs)
        _check(0.01 <= self.tolerance_lu <= 5.0, "loudness tolerance_lu", "between 0.01 and 5 LU", self.tolerance_lu)
        _check(0.0 <= self.max_gain_reduction_db <= 40.0, "loudness max_gain_reduction_db",
               "between 0 and 40 dB", self.max_gain_reduction_db)
        _check(isinstance(self.max_passes, int) and 1 <= self.max_passes <= 20, "loudness max_passes",
               "an integer from 1 to 20", self.max_passes)


@dataclass(frozen=True)
class DitherParams:
    """Quantization to ``bit_depth`` (16 or 24; ``None`` keeps float).

    TPDF dither of 2 LSB peak-to-peak decorrelates the rounding error from the
    music; ``noise_shaping="lipshitz"`` moves it towards high frequencies
    where the ear is less sensitive (44.1/48 kHz).
    """

    bit_depth: int | None = None
    dither: bool = True
    noise_shaping: str = "none"
    seed: int = 0
    bypass: bool = False

    def __post_init__(self):
        if self.bit_depth is not None:
            _check(self.bit_depth in BIT_DEPTHS, "dither bit_depth", f"one of {BIT_DEPTHS} (or omitted for float)",
                   self.bit_depth)
        _check(self.noise_shaping in NOISE_SHAPES, "dither noise_shaping", f"one of {NOISE_SHAPES}",
               self.noise_shaping)




DETECTION_MODES = ("peak", "rms")
SATURATION_OVERSAMPLE = (4, 8, 16)
# Most drive per oversampling factor that keeps every alias of a full-scale
# 10 kHz sine at 48 kHz under -90 dBFS (measured: 4x -109 dBFS at 6 dB,
# 8x -107 at 15 dB, 16x -100 at 24 dB; tanh's harmonics decay more slowly
# the harder it is driven, so more of them reach the folding frequency).
SATURATION_MAX_DRIVE_DB = {4: 6.0, 8: 15.0, 16: 24.0}


def _check_compressor(p, name: str) -> None:
    """Shared range checks of :class:`CompressorBand` and :class:`CompressorParams`."""
    _check(-80.0 <= p.threshold_db <= 0.0, f"{name} threshold_db", "between -80 and 0 dB", p.threshold_db)
    _check(1.0 <= p.ratio <= 100.0, f"{name} ratio", "between 1 (no compression) and 100 (a limiter)", p.ratio)
    _check(0.0 <= p.knee_db <= 40.0, f"{name} knee_db", "between 0 (hard knee) and 40 dB", p.knee_db)
    _check(0.01 <= p.attack_ms <= 1000.0, f"{name} attack_ms", "between 0.01 and 1000 ms", p.attack_ms)
    _check(1.0 <= p.release_ms <= 10_000.0, f"{name} release_ms", "between 1 and 10000 ms", p.release_ms)
    _check(-24.0 <= p.makeup_db <= 24.0, f"{name} makeup_db", "between -24 and +24 dB", p.makeup_db)


@dataclass(frozen=True)
class CompressorBand:
    """One band's gain computer (Giannoulis, Massberg & Reiss 2012, JAES).

    Above ``threshold_db`` the level rises 1 dB per ``ratio`` dB; ``knee_db``
    is the width of the quadratic soft knee centred on the threshold (0 =
    hard knee). The gain reduction rises with time constant ``attack_ms``
    and falls with ``release_ms`` (in dB); ``makeup_db`` is added after.
    """

    threshold_db: float = -20.0
    ratio: float = 2.0
    knee_db: float = 6.0
    attack_ms: float = 10.0
    release_ms: float = 150.0
    makeup_db: float = 0.0

    def __post_init__(self):
        _check_compressor(self, "compressor band")


@dataclass(frozen=True)
class MultibandParams:
    """Multiband compressor: linear-phase crossover at ``crossovers_hz``
    (2 or 3 ascending frequencies: 3 or 4 bands, low to high), one
    :class:`CompressorBand` per band.

    ``detection``: ``peak`` (channel-linked |x|) or ``rms`` (mean square
    smoothed with time constant ``rms_ms``, channel-linked; a sine reads
    3 dB under its peak). Unset ``bands`` get the :class:`CompressorBand`
    defaults. The default is bypassed: a preset turns it on with
    ``bypass = false``.
    """

    crossovers_hz: tuple[float, ...] = (120.0, 1000.0, 6000.0)
    bands: tuple[CompressorBand, ...] | None = None
    detection: str = "peak"
    rms_ms: float = 10.0
    bypass: bool = True

    def __post_init__(self):
        xo = tuple(float(f) for f in self.crossovers_hz)
        object.__setattr__(self, "crossovers_hz", xo)
        _check(len(xo) in (2, 3), "multiband crossovers_hz", "2 or 3 frequencies (3 or 4 bands)", self.crossovers_hz)
        _check(all(20.0 <= f <= 20_000.0 for f in xo), "multiband crossovers_hz",
               "frequencies between 20 and 20000 Hz", self.crossovers_hz)
        _check(all(b > a * 1.25 for a, b in zip(xo, xo[1:])), "multiband crossovers_hz",
               "ascending, each more than 1.25x (a third of an octave) above the one before", self.crossovers_hz)
        bands = tuple(CompressorBand() for _ in range(len(xo) + 1)) if self.bands is None else tuple(self.bands)
        object.__setattr__(self, "bands", bands)
        _check(len(bands) == len(xo) + 1 and all(isinstance(b, CompressorBand) for b in bands), "multiband bands",
               f"{len(xo) + 1} compressor bands (one more than crossovers_hz)", self.bands)
        _check(self.detection in DETECTION_MODES, "multiband detection", f"one of {DETECTION_MODES}", self.detection)
        _check(0.1 <= self.rms_ms <= 1000.0, "multiband rms_ms", "between 0.1 and 1000 ms", self.rms_ms)


@dataclass(frozen=True)
class CompressorParams:
    """Broadband compressor: the :class:`CompressorBand` gain computer on the
    whole signal, with ``detection`` and ``rms_ms`` as in
    :class:`MultibandParams`. The default is bypassed."""

    threshold_db: float = -20.0
    ratio: float = 2.0
    knee_db: float = 6.0
    attack_ms: float = 10.0
    release_ms: float = 150.0
    makeup_db: float = 0.0
    detection: str = "peak"
    rms_ms: float = 10.0
    bypass: bool = True

    def __post_init__(self):
        _check_compressor(self, "compressor")
        _check(self.detection in DETECTION_MODES, "compressor detection", f"one of {DETECTION_MODES}", self.detection)
        _check(0.1 <= self.rms_ms <= 1000.0, "compressor rms_ms", "between 0.1 and 1000 ms", self.rms_ms)

    @property
    def band(self) -> CompressorBand:
        """The gain-computer settings as one :class:`CompressorBand`."""
        return CompressorBand(self.threshold_db, self.ratio, self.knee_db, self.attack_ms, self.release_ms,
                              self.makeup_db)


@dataclass(frozen=True)
class SaturationParams:
    """Oversampled soft clipper: ``tanh(g x) / g`` with ``g`` = ``drive_db``.

    Unity gain for quiet signals; a peak at ``-drive_db`` dBFS is rounded by
    about 2.4 dB, louder ones approach ``-drive_db`` dBFS. ``mix`` (0-1)
    blends it with the dry signal. Runs at ``oversample`` times the rate so
    its harmonics do not alias: ``drive_db`` may go up to 6, 15 or 24 dB at
    4x, 8x or 16x (:data:`SATURATION_MAX_DRIVE_DB`). The default is bypassed.
    """

    drive_db: float = 6.0
    mix: float = 1.0
    oversample: int = 8
    bypass: bool = True

    def __post_init__(self):
        _check(0.0 <= self.drive_db <= 24.0, "saturation drive_db", "between 0 and 24 dB", self.drive_db)
        _check(0.0 <= self.mix <= 1.0, "saturation mix", "between 0 (dry) and 1 (all saturated)", self.mix)
        _check(self.oversample in SATURATION_OVERSAMPLE, "saturation oversample",
               f"one of {SATURATION_OVERSAMPLE}", self.oversample)
        most = SATURATION_MAX_DRIVE_DB[self.oversample]
        if self.drive_db > most:
            higher = [f"oversample = {f} allows {d:g} dB" for f, d in SATURATION_MAX_DRIVE_DB.items() if d > most]
            raise ValueError(f"saturation drive_db must be at most {most:g} dB with oversample = {self.oversample} "
                             f"(so aliasing stays under -90 dBFS), got {self.drive_db!r}; "
                             + ("; ".join(higher) or "lower the drive"))


@dataclass(frozen=True)
class MatchParams:
    """Reference matching (:mod:`kernels.match`): a linear-phase EQ that moves
    the track's long-term average spectrum toward a reference master's.

    ``reference``: path of the reference file (resolved and decoded by the
    render at the track's rate). The correction is the difference of the two
    spectra smoothed over ``smoothing_octaves`` (fraction of an octave), its
    level offset removed, limited to +/- ``max_gain_db`` and applied between
    ``min_freq_hz`` and ``max_freq_hz`` (held flat outside). ``loudness``:
    the loudness target becomes the reference's integrated loudness (a
    catalog row's own ``target_lufs`` still wins); ``false`` keeps the
    preset's target. The default is bypassed.
    """

    reference: str | None = None
    max_gain_db: float = 6.0
    smoothing_octaves: float = 1.0 / 3.0
    min_freq_hz: float = 30.0
    max_freq_hz: float = 16000.0
    loudness: bool = True
    bypass: bool = True

    def __post_init__(self):
        if self.reference is not None:
            _check(isinstance(self.reference, str) and self.reference != "", "match reference",
                   "a path to a reference audio file", self.reference)
        if not self.bypass:
            _check(self.reference is not None, "match reference",
                   "a path to a reference audio file (required unless bypass = true)", self.reference)
        _check(0.0 <= self.max_gain_db <= 24.0, "match max_gain_db", "between 0 and 24 dB", self.max_gain_db)
        _check(0.01 <= self.smoothing_octaves <= 3.0, "match smoothing_octaves",
               "between 0.01 and 3 octaves (1/3 is the usual)", self.smoothing_octaves)
        _check(10.0 <= self.min_freq_hz <= 20_000.0, "match min_freq_hz", "between 10 and 20000 Hz",
               self.min_freq_hz)
        _check(self.min_freq_hz * 2.0 <= self.max_freq_hz <= 40_000.0, "match max_freq_hz",
               "at least an octave above min_freq_hz and at most 40000 Hz", self.max_freq_hz)
        _check(isinstance(self.loudness, bool), "match loudness", "true or false", self.loudness)


@dataclass(frozen=True)
class ChainParams:
    """The whole chain, in processing order:
    EQ -> reference match -> multiband compressor -> compressor -> saturation -> reverb
    -> loudness gain -> true-peak limiter -> dither/quantize.

    The dynamics and the match are bypassed by default, so a chain that does
    not name them renders exactly as before they existed.
    """

    eq: EQParams = field(default_factory=lambda: EQParams(bypass=True))
    reverb: ReverbParams = field(default_factory=lambda: ReverbParams(bypass=True))
    loudness: LoudnessParams = field(default_factory=LoudnessParams)
    limiter: LimiterParams = field(default_factory=LimiterParams)
    dither: DitherParams = field(default_factory=DitherParams)
    multiband: MultibandParams = field(default_factory=MultibandParams)
    compressor: CompressorParams = field(default_factory=CompressorParams)
    saturation: SaturationParams = field(default_factory=SaturationParams)
    match: MatchParams = field(default_factory=MatchParams)

    @classmethod
    def bypassed(cls) -> "ChainParams":
        """Every stage bypassed: the chain returns its input bit for bit."""
        return cls(
            eq=EQParams(bypass=True),
            reverb=ReverbParams(bypass=True),
            loudness=LoudnessParams(target_lufs=None, bypass=True),
            limiter=LimiterParams(bypass=True),
            dither=DitherParams(bypass=True),
            multiband=MultibandParams(bypass=True),
            compressor=CompressorParams(bypass=True),
            saturation=SaturationParams(bypass=True),
            match=MatchParams(bypass=True),
        )
