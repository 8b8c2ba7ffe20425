"""Local pair mining: region proposers and LISM/FLISM sentence-region matching."""
