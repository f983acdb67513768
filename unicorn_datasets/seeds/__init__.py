"""Seed sources (files, dataset folders, Hub ids, label x template domains) and balanced selection."""
