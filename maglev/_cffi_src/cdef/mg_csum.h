uint32_t mg_csum_add(uint32_t sum, const uint8_t *data, size_t len);
uint16_t mg_csum_fold(uint32_t sum);
