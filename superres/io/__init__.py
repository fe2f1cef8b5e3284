"""File input and output, the bottom layer beside archs/: atomic writes (fs), format names (formats),
image decoding and encoding with bit depth, alpha, ICC and EXIF (images). Imports nothing else of superres.
"""
