int32_t mg_quic_route(const void *tables, int vip, const uint8_t *pkt, const struct mg_parsed *p);
