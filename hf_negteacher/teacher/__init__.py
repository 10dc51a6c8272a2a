"""The negative teacher: its spec, quantizers, packing, the packed layer, building it from a policy, the
bitsandbytes backend, calibration of its strength, and contrastive decoding against it."""
