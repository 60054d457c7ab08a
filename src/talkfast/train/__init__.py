"""Training the embedded model: the autoencoder, then the ReferenceNet + UNet3D."""
