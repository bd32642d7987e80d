"""The local Cumulocity stand-in (design section 6)."""
