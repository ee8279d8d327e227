invalid
