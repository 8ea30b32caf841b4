"""The ES random-walk theory: closed-form predictions, a toy landscape, validation against runs."""
