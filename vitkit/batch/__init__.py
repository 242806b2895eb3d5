"""The batch layer: map.py is the one loop that turns an ordered list of image files into one row per input
(decode workers, error rows, progress); job.py makes such a run resumable and shardable into an output
file (parts, fingerprint, lock, merge); distributed.py joins torchrun's process group. Used by classify,
embed, explain, the index and the probe's feature pass; it imports nothing above vitkit.data.
"""
