uint64_t mg_siphash13(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len);
