"""Data: the NORB file format, smallNORB and synthnorb loading, viewpoint splits, preprocessing."""
