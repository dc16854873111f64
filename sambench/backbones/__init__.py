"""Model backbones shared by all methods (SAM; CLIP and text encoders come with their methods)."""
