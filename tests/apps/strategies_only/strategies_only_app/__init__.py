"""A minimal Flower app on flora's strategies (a test fixture)."""
