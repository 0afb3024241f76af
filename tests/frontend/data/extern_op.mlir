// torch-mlir has no ODS op for aten.special_erfcx, so it prints the generic torch.operator form;
// torch does have it, so tilewright imports it as an extern ATen call.
module {
  func.func @main(%arg0: !torch.vtensor<[4,5],f32>) -> !torch.vtensor<[4,5],f32> {
    %0 = torch.operator "aten.special_erfcx"(%arg0) : (!torch.vtensor<[4,5],f32>) -> !torch.vtensor<[4,5],f32>
    return %0 : !torch.vtensor<[4,5],f32>
  }
}
