"""Sample-quality metrics: Fréchet distance on a small Fashion-MNIST feature net (issue 7)."""
