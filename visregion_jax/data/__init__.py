"""Raw inputs (images, conversations) turned into the arrays the models consume."""
