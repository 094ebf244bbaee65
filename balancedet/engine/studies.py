"""The ablation studies of ``balancedet ablate --study NAME``: the papers' comparisons on the digits scenes.

A study is a base preset, a list of named cells (each a set of ``--set`` overrides, optionally on another
preset: a cell is not always a grid product), a short schedule every cell shares, and the orderings its
papers report (``Claim``), which ``summary.md`` checks against the measured means:

- ``focal`` (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, Table 1) on
  ``retinanet_digits``: CE; alpha-balanced CE at alpha 0.75 (Table 1a's best); FL at gamma 0.5, 1, 2, 5,
  each with Table 1b's best alpha for that gamma (0.5, 0.25, 0.25, 0.25); OHEM 1:3 with CE (Table 1d:
  the hardest examples after NMS at IoU 0.5 with a positive:negative ratio of 1:3, batch 128, its best
  1:3 row); SSD's hard negative mining at 3:1 with CE (Liu et al., SSD, ECCV 2016, sec. 2.2); GHM-C
  (Li, Liu, Wang, AAAI 2019, eq. 8). Claims: FL (gamma 2) > alpha-CE > CE, FL (gamma 2) >= OHEM 1:3.
- ``gfl`` (Li et al., "Generalized Focal Loss", NeurIPS 2020, arXiv 2006.04388, Table 1) on ``gfl_digits``:
  FL, QFL, QFL + DFL, all with the general distribution of 17 bins and GIoU (``dfl_weight=0`` drops DFL).
  Claims: QFL + DFL >= QFL >= FL.
- ``libra`` on the two-stage digits presets: Faster R-CNN with random RoI sampling
  (``faster_rcnn_digits``), Libra R-CNN (Pang et al., CVPR 2019, arXiv 1904.02701: IoU-balanced sampling,
  Balanced Feature Pyramid, Balanced L1; ``libra_rcnn_digits``), OHEM in the box head (Shrivastava et al.,
  CVPR 2016, arXiv 1604.03540; ``faster_rcnn_ohem_digits``) and A-Fast-RCNN (Wang et al., CVPR 2017,
  arXiv 1704.03414; ``a_fast_rcnn_digits``). Claims: each remedy >= random sampling, as its paper reports
  over its Fast/Faster R-CNN baseline.

The schedule counts epochs (``train.schedule=epochs``, ``train.max_time=null``), so every cell trains the
same number of steps whatever the machine's load; a schedule fitted to a time budget would give the cells
of a busy machine fewer steps than those of an idle one. The data are the digits scenes with the first
2,000 of the default 3,000 training scenes (``STUDY_DIGITS``: each scene is a function of its index, so
these are the default set's first 2,000) and the default 300 validation scenes; 2,000 is a whole number of
16-image batches (125 steps an epoch). The shape of the presets' schedule is kept: the decay at 4/5 of the
run, the warm-up at most a quarter of it (the presets' 100 steps otherwise), one evaluation at the end.

Sizing, for "one study in about an hour on the 2-core CPU", from the step times the project measured on
an idle 2-core AVX-512 EPYC (16 images of 128 px, two threads): ``retinanet_digits`` 0.47 s a step
(``balancedet.engine.train.memory_format``), ``faster_rcnn_digits`` 696 steps in 826 s wall, evaluation
and data included (1.19 s a step all told, before its RoIAlign became the sparse products of
``balancedet.models.roi_align``: 975 steps in 824 s since, 0.85 s a step, so that the libra study now
takes about 45 minutes); ``gfl_digits`` at 1.1 x RetinaNet's step
(measured below), and about 10 s a run for the data, the final evaluation and its plots:

=======  =====  ==========  ======  ======================================  =============
study    cells  runs (x3)   steps   per run                                 study
=======  =====  ==========  ======  ======================================  =============
focal    9      27          250     250 x 0.47 s + 10 s = 128 s             58 min
gfl      3      9           750     750 x 0.52 s + 10 s = 400 s             60 min
libra    4      12          250     250 x 1.19 s = 298 s                    60 min
=======  =====  ==========  ======  ======================================  =============

The OHEM cell ranks and suppresses its anchors once a step, Libra R-CNN adds the BFP, A-Fast-RCNN its
ASDN: those cells take somewhat longer, not measured here.

Measured here on a 2-core AMD EPYC with AVX-512 while another training job kept one core busy (so the
figures are pessimistic): one ``train_step`` of each preset in turn from a loaded run (``setup``, two
warm-up steps, then 3 rounds of 6 steps each), with ``OMP_NUM_THREADS=1``: ``retinanet_digits`` median
0.81 s (min 0.74), ``gfl_digits`` 0.85 s (min 0.74), the evaluation of the 300 validation scenes 5.2 s and
5.6 s. With the default two threads on the shared cores the same steps took 6.9 s (RetinaNet), 6.4 s (GFL)
and 7.4 s (Faster R-CNN) at the median, 2.7, 2.6 and 5.0 s at best: two threads fighting another process
for a core are several times slower than one, so run a study on an idle machine, or with
``OMP_NUM_THREADS=1`` beside another job (then about 0.8 s a step: focal about 1 h 40 min).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["STUDIES", "STUDY_DIGITS", "Cell", "Claim", "Study", "study_schedule"]


@dataclass(frozen=True)
class Cell:
    """One setting of an ablation: a name (the run folders' prefix) and the ``--set`` overrides that make
    it, on ``preset`` (``None``: the ablation's own preset)."""

    name: str
    overrides: tuple[str, ...]
    preset: str | None = None


@dataclass(frozen=True)
class Claim:
    """An ordering a paper reports: cell ``better`` has a higher mean AP than cell ``worse`` (``strict``)
    or at least the same; ``source`` names the paper and table."""

    better: str
    worse: str
    strict: bool
    source: str

    def __str__(self) -> str:
        return f"{self.better} {'>' if self.strict else '>='} {self.worse}"


@dataclass(frozen=True)
class Study:
    """Cells trained on ``preset`` with the shared ``schedule`` overrides and, with ``digits``, on the
    digits scenes of those options (``DigitsOptions`` fields); ``claims`` are checked in ``summary.md``."""

    name: str
    preset: str
    cells: tuple[Cell, ...]
    schedule: tuple[str, ...] = ()
    digits: dict[str, object] | None = None
    claims: tuple[Claim, ...] = ()
    about: str = ""

    def base_overrides(self, folder: Path) -> list[str]:
        """The overrides every cell gets: the dataset (a digits YAML written into ``folder``), the schedule."""
        if self.digits is None:
            return list(self.schedule)
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / "digits.yaml").resolve()
        text = "# the data of this study: built-in digits scenes (see balancedet.engine.studies)\n"
        text += yaml.safe_dump({"format": "digits", "options": dict(self.digits)}, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return [f"data.dataset={path}", *self.schedule]


#: The first 2,000 of the default 3,000 training scenes and the default 300 validation scenes.
STUDY_DIGITS: dict[str, object] = {"num_train": 2000}
_STEPS_PER_EPOCH = 2000 // 16


def study_schedule(epochs: int) -> tuple[str, ...]:
    """``epochs`` of ``STUDY_DIGITS`` with the presets' shape: decay at 4/5, warm-up at most a quarter
    (``balancedet ablate --study NAME --epochs N`` trains a study at another length with it)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs {epochs!r}: expected a positive number of epochs")
    warmup = min(100, epochs * _STEPS_PER_EPOCH // 4)
    return (
        "train.schedule=epochs",
        "train.max_time=null",
        f"train.epochs={epochs}",
        f"train.milestones=[{0.8 * epochs:g}]",
        f"train.warmup_iters={warmup}",
        f"train.eval_interval={epochs}",
    )


def _focal(gamma: float, alpha: float) -> Cell:
    return Cell(
        f"FL-gamma{gamma:g}",
        ("model.cls_loss=focal", f"model.cls_loss_args.gamma={gamma:g}", f"model.cls_loss_args.alpha={alpha:g}"),
    )


_FOCAL_PAPER = "focal paper (arXiv 1708.02002)"

STUDIES: dict[str, Study] = {
    "focal": Study(
        name="focal",
        preset="retinanet_digits",
        cells=(
            Cell("CE", ("model.cls_loss=ce",)),
            Cell("alpha-CE", ("model.cls_loss=alpha_ce",)),  # alpha 0.75: the builder's setting (Table 1a)
            _focal(0.5, 0.5),  # Table 1b: the best alpha for each gamma
            _focal(1, 0.25),
            _focal(2, 0.25),
            _focal(5, 0.25),
            Cell(
                "OHEM-1to3",
                (
                    "model.cls_loss=ce",
                    "model.sampler=ohem",
                    # Table 1d's "OHEM 1:3" at batch 128 and NMS 0.5 (its best 1:3 row): at most 32 positives
                    # (pos_fraction 0.25) and 3 negatives per positive, of 128 anchors per image
                    "model.sampler_args.num=128",
                    "model.sampler_args.pos_fraction=0.25",
                    "model.sampler_args.neg_pos_ratio=3",
                    "model.sampler_args.nms_iou=0.5",
                ),
            ),
            Cell("SSD-3to1", ("model.cls_loss=ce", "model.sampler=ssd")),
            Cell("GHM-C", ("model.cls_loss=ghmc",)),
        ),
        schedule=study_schedule(2),
        digits=STUDY_DIGITS,
        claims=(
            Claim("FL-gamma2", "alpha-CE", True, f"{_FOCAL_PAPER}, Table 1a-b"),
            Claim("alpha-CE", "CE", True, f"{_FOCAL_PAPER}, Table 1a"),
            Claim("FL-gamma2", "OHEM-1to3", False, f"{_FOCAL_PAPER}, Table 1d"),
        ),
        about="RetinaNet's classification loss and sampling (focal paper, Table 1)",
    ),
    "gfl": Study(
        name="gfl",
        preset="gfl_digits",
        cells=(
            Cell("FL", ("model.cls_loss=focal", "model.dfl_weight=0")),
            Cell("QFL", ("model.cls_loss=qfl", "model.dfl_weight=0")),
            Cell("QFL+DFL", ("model.cls_loss=qfl", "model.dfl_weight=0.25")),
        ),
        schedule=study_schedule(6),
        digits=STUDY_DIGITS,
        claims=(
            Claim("QFL+DFL", "QFL", False, "GFL paper (arXiv 2006.04388), Table 1"),
            Claim("QFL", "FL", False, "GFL paper (arXiv 2006.04388), Table 1"),
        ),
        about="GFL's quality focal loss and distribution focal loss (GFL paper, Table 1)",
    ),
    "libra": Study(
        name="libra",
        preset="faster_rcnn_digits",
        cells=(
            Cell("Faster-RCNN", (), "faster_rcnn_digits"),
            Cell("Libra-RCNN", (), "libra_rcnn_digits"),
            Cell("OHEM", (), "faster_rcnn_ohem_digits"),
            Cell("A-Fast-RCNN", (), "a_fast_rcnn_digits"),
        ),
        schedule=study_schedule(2),
        digits=STUDY_DIGITS,
        claims=(
            Claim("Libra-RCNN", "Faster-RCNN", False, "Libra R-CNN (arXiv 1904.02701), Table 1"),
            Claim("OHEM", "Faster-RCNN", False, "OHEM paper (arXiv 1604.03540), sec. 5"),
            Claim("A-Fast-RCNN", "Faster-RCNN", False, "A-Fast-RCNN paper (arXiv 1704.03414), sec. 4"),
        ),
        about="two-stage sampling and balancing remedies against random RoI sampling",
    ),
}
