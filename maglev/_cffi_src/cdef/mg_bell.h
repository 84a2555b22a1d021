struct mg_bell {
    uint32_t word;
    uint32_t need_wakeup;
    uint32_t first_ring;
    uint32_t n_rings;
    uint64_t sleeps;
    uint64_t wakeups;
    uint32_t alert;
    ...;
};
