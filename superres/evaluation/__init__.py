"""Evaluation as a library: the metrics (psnr, ssim, niqe, lpips) and the benchmark protocol
(protocol: pairs, upscalers, scores). Imports only the layers below (archs, io, data, inference).
"""
