"""Flat image at each image's true mean vs the rows of `emdenoise test` (per_image.csv), on the images that are
not pure vacuum (a flat image is exact there)."""

import csv, sys
from collections import defaultdict
import numpy as np, torch
from emdenoise.data.splits import load_card, load_split
from emdenoise.engine.metrics import psnr_per_image

d, per_image = sys.argv[1], sys.argv[2]
R = float(load_card(d)["data_range"])
t = load_split(d, "test")
clean = torch.from_numpy(t.clean)
flat = clean.mean(dim=(1, 2), keepdim=True).expand_as(clean)
keep = t.clean.std(axis=(1, 2)) > 0
p = psnr_per_image(flat, clean, R).numpy()[keep]
print(f"{d}: {keep.sum()} of {len(keep)} test images not vacuum; data range {R:.4g}")
print(f"| flat (true mean) | {p.mean():.2f} | {np.median(p):.2f} |")
rows = list(csv.DictReader(open(per_image)))
by = defaultdict(dict)
for r in rows:
    by[r["method"]][int(r["index"])] = float(r["psnr"])
for m, vals in by.items():
    v = np.array([vals[i] for i in range(len(keep)) if keep[i]])
    print(f"| {m} | {v.mean():.2f} | {np.median(v):.2f} |   beats flat on {(v > p).mean() * 100:.0f} % of images")
