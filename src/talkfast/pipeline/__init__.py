"""talkfast.pipeline"""

# Where a clip's motion frames come from (GenerateOptions.motion_source); here, so that the
# command lines can offer them without importing torch.
MOTION_SOURCES = ("latents", "pixels", "reference")
