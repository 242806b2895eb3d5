"""`vitkit eval`: a classifier's accuracy on a labelled folder in the layouts ImageNet ships in, beside the
checkpoint's published figure. layouts.py reads the set, run.py scores it, metrics.py counts, report.py tells.
"""
