"""Reference training: generators for the policies and classifiers trained with them."""
