# Hand-written stubs for pyneg._cuda (checked against the module by
# tests/test_cuda.py when it is built). Pointers, the device index and the
# stream handle are plain integers (tensor.data_ptr(), stream.cuda_stream).

def device_count() -> int: ...
def id_set_capacity(expected: int) -> int: ...
def alias_sample(
    device: int, stream: int, entries: int, num_classes: int, seed: int, offset: int, out: int, n: int
) -> None: ...
def alias_sample_excluding(
    device: int,
    stream: int,
    entries: int,
    num_classes: int,
    table_cum: int,
    list_offsets: int,
    list_ids: int,
    list_cum: int,
    allowed_mass: int,
    rows_per_list: int,
    seed: int,
    offset: int,
    rows: int,
    k: int,
    out: int,
) -> None: ...
def alias_sample_unique(
    device: int,
    stream: int,
    entries: int,
    num_classes: int,
    list_offsets: int,
    list_ids: int,
    list_cum: int,
    allowed_mass: int,
    rows_per_list: int,
    seed: int,
    offset: int,
    first_row: int,
    rows: int,
    k: int,
    slots: int,
    capacity: int,
    tries: int,
    out: int,
) -> None: ...
def hs_forward(
    dtype: str,
    device: int,
    stream: int,
    input: int,
    weight: int,
    bias: int,
    target: int,
    offsets: int,
    nodes: int,
    codes: int,
    batch: int,
    dim: int,
    num_classes: int,
    num_inner: int,
    num_steps: int,
    nll: int,
) -> None: ...
def hs_backward(
    dtype: str,
    device: int,
    stream: int,
    input: int,
    weight: int,
    bias: int,
    target: int,
    offsets: int,
    nodes: int,
    codes: int,
    batch: int,
    dim: int,
    num_classes: int,
    num_inner: int,
    num_steps: int,
    grad_nll: int,
    grad_input: int,
    grad_weight: int,
    grad_bias: int,
) -> None: ...
