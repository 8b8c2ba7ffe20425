"""Long captions for images with an image-text-to-text model, and caption-image agreement scores."""
