"""Tools around the library: the synthetic corpus, VoxCeleb/MUSAN/RIR preparation, the MFCC baseline."""
