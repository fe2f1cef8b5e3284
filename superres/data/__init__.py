"""Data: MATLAB-exact bicubic resize (resize), the training and benchmark degradations (degrade),
training datasets and samplers (datasets), int8 calibration patches (calibration).
Imports only archs/ and io/.
"""
