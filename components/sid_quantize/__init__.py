"""SID quantization stage: item embeddings -> residual quantizer -> unique, stable Semantic IDs."""
