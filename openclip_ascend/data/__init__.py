"""Step 1's inputs: the data sets' layouts, the generated samples, open_clip's pixels and tokens, and the preprocessing that writes them as .npy."""
