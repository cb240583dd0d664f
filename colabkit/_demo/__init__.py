"""The sample project that ``colabkit demo`` copies into the local Drive stand-in."""
