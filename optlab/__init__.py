"""OptLab's engine: configs, data, models, the training loop, measurement and the store.

Imports with only torch, torchvision and the standard library; Plotly is imported lazily inside
the chart builders, and Streamlit never.
"""
__version__ = "0.1.0"
