"""Dataset generation speed (Fourier-space rendering, noise, HDF5 writing)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from deconvbench.cards import load_card
from deconvbench.sim.generate import generate


class Generate:
    """Generate the first 256 stamps of a card's first split with one worker."""

    params = ["ground-v3", "space-v3", "metacal-v3", "superbit-v3"]
    param_names = ["card"]
    number = 1
    repeat = (1, 3, 60.0)
    timeout = 600

    def setup(self, card):
        self.card = load_card(card)
        self.split = next(iter(self.card.splits))
        self.folder = Path(tempfile.mkdtemp(prefix="deconvbench-asv-gen-"))

    def teardown(self, card):
        shutil.rmtree(self.folder, ignore_errors=True)

    def time_generate_256(self, card):
        generate(self.card, self.split, self.folder / "out.h5", n=256, workers=1)

    def peakmem_generate_256(self, card):
        generate(self.card, self.split, self.folder / "peak.h5", n=256, workers=1)


#: the v2 renderer (point-corrected wrap, drawImage psf stamp): still that of metacal-offsets
#: (v2) and metacal-space (v1)
V2_RENDERER = ("stamp.kernel_wrap=point-corrected", "stamp.psf_stamp=drawimage")


class GenerateV2Renderer(Generate):
    """As :class:`Generate`, each card drawn with the v2 renderer (the same galaxies and
    PSFs): the history of the renderer that the v2 cards used, beside the v3 cards' above."""

    def setup(self, card):
        super().setup(card)
        self.card = load_card(card, V2_RENDERER)
