"""SCHP human parsers (LIP and ATR), as CatVTON's AutoMasker runs them.

Modules: ``config`` (real and tiny configs, labels), ``network`` (AugmentCE2P), ``checkpoint`` (state
dicts, random weights), ``convert`` (``.pth`` -> safetensors, once), ``parser`` (preprocessing,
batched inference, label maps in image space). Import them directly; this package stays free of torch.
"""
