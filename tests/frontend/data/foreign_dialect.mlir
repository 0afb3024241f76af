// An op from another dialect (arith) inside the function: not torch-dialect, rejected by name.
module {
  func.func @main(%arg0: !torch.vtensor<[2],f32>) -> !torch.vtensor<[2],f32> {
    %c = arith.constant 1 : i64
    return %arg0 : !torch.vtensor<[2],f32>
  }
}
