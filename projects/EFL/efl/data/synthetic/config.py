"""The parameters of the synthetic dataset; every one of them keys the cache."""

from dataclasses import asdict, dataclass, fields

from .draw import COLORS, FAMILY_SHAPES, MARKS, MAX_CLASSES

__all__ = ["SyntheticLongTailConfig"]


@dataclass(frozen=True)
class SyntheticLongTailConfig:
    """Parameters of the synthetic long-tailed dataset (all of them key the cache).

    Attributes:
        num_classes: K, at most 240 (120 without the striped pattern).
        num_train_images / num_val_images: images per split.
        image_size: square image side in pixels.
        min_objects / max_objects: distinct classes per image (uniform), before duplicates;
            an image never holds more than ``max_objects`` instances.
        min_object_size / max_object_size: object side in pixels (log-uniform).
        min_images_per_class: training images of the rarest class (tail of the curve).
        zipf_offset: q of the Zipf-Mandelbrot curve over class rank; larger = flatter
            (q -> inf is an exponential over rank), smaller = steeper head.
        duplicate_prob: chance that a (image, class) pair gets a second instance.
        noise_std: std of the per-pixel Gaussian noise (grey levels).
        rare_max_images / common_max_images: LVIS frequency thresholds on training image
            counts (rare <= 10 < common <= 100 < frequent).
        seed: everything (class identities, the tail permutation, layouts, pixels).
        families: 0 (default): every class its own shape x colour, as always. F > 0: LVIS's
            structure - F families of ``family_size`` classes sharing one shape and colour:
            a parent without a mark, among the F most frequent classes, and relatives that
            differ from it only in a small mark (dot, bar, inner outline, cross) and take
            random places in the rest of the tail (mostly rare and common); the other
            classes as with 0.
        family_size: classes per family, parent included (2 to 1 + the number of marks).
    """

    num_classes: int = 120
    num_train_images: int = 2000
    num_val_images: int = 300
    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 16
    max_object_size: int = 44
    min_images_per_class: int = 2
    zipf_offset: float = 10.0
    duplicate_prob: float = 0.2
    noise_std: float = 6.0
    rare_max_images: int = 10
    common_max_images: int = 100
    seed: int = 0
    families: int = 0
    family_size: int = 4

    def cache_key(self) -> dict:
        """The parameters that key the cache (the manifest's ``config``). Without families
        the family fields are left out, so the data and key of before they existed stay
        valid."""
        key = asdict(self)
        if self.families == 0:
            for name in ("families", "family_size"):
                key.pop(name)
        return key

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(f"SyntheticLongTailConfig: {msg}")

        for f in fields(self):
            v = getattr(self, f.name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool), f"{f.name} must be a number")
        check(2 <= self.num_classes <= MAX_CLASSES, f"num_classes must be in [2, {MAX_CLASSES}]")
        check(self.num_train_images >= 1 and self.num_val_images >= 1, "need >= 1 image per split")
        check(self.image_size >= 32, "image_size must be >= 32")
        check(1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects")
        check(
            8 <= self.min_object_size <= self.max_object_size <= self.image_size // 2,
            "need 8 <= min_object_size <= max_object_size <= image_size / 2",
        )
        check(
            1 <= self.min_images_per_class <= self.num_train_images,
            "need 1 <= min_images_per_class <= num_train_images",
        )
        check(self.zipf_offset > 0, "zipf_offset must be > 0")
        check(0 <= self.duplicate_prob <= 1, "duplicate_prob must be in [0, 1]")
        check(self.noise_std >= 0, "noise_std must be >= 0")
        check(1 <= self.rare_max_images < self.common_max_images, "need 1 <= rare_max < common_max")
        check(self.seed >= 0 and int(self.seed) == self.seed, "seed must be an int >= 0")
        check(self.families >= 0 and int(self.families) == self.families, "families must be an int >= 0")
        if self.families:
            F, m = self.families, self.family_size
            check(2 <= m <= 1 + len(MARKS), f"family_size must be in [2, {1 + len(MARKS)}]")
            check(F * m <= self.num_classes, f"families x family_size ({F} x {m}) exceeds num_classes")
            check(F <= len(FAMILY_SHAPES) * len(COLORS),
                  f"at most {len(FAMILY_SHAPES) * len(COLORS)} families (filled shapes x colours)")
            singles = self.num_classes - F * m
            check(F + singles <= MAX_CLASSES,
                  f"{F} families + {singles} single classes need more than the {MAX_CLASSES} "
                  "shape x colour x pattern identities")
