"""Commands over many images, built on vitkit.batch: classify.py (rows of top-k labels, streamed or to a
file), embed.py (embedding files), bench.py (model-only and end-to-end speed, fraction of the measured peak), doctor.py (the machine
 and what --fast can choose on it).
"""
