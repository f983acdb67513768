"""The output folder: its layout, atomic writes, parts and configs, the row contract, the card, the Hub, exports."""
