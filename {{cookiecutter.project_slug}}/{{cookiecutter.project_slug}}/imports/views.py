from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.validators import FileExtensionValidator
from django.shortcuts import redirect, render

from .models import TooManyImports, TransactionImport


class ImportForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        validators=[FileExtensionValidator(["csv"])],
        widget=forms.FileInput(attrs={"accept": ".csv"}),
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.IMPORT_MAX_BYTES:
            raise forms.ValidationError(f"The file is larger than {settings.IMPORT_MAX_BYTES // 1_000_000} MB.")
        return upload


# --8<-- [start:upload-view]
@login_required
def import_list(request):
    """The user's imports, and the upload form. The request stores the file; a task imports it."""
    form, status = ImportForm(request.POST or None, request.FILES or None), 200
    if request.method == "POST" and not form.is_valid():
        status = 400
    elif request.method == "POST":
        try:
            # Row-locks the user, enforces IMPORT_MAX_PENDING_PER_USER, stores the
            # file and dispatches the import after commit (models.py).
            upload = TransactionImport.receive(request.user, form.cleaned_data["file"])
        except TooManyImports as refusal:
            messages.error(request, f"Import not started: {refusal}.")
            status = 429
        else:
            messages.success(request, f"Import {upload.pk} received: its rows appear here when it has run.")
            return redirect("imports:list")
    imports = TransactionImport.objects.filter(user=request.user)[:20]
    return render(request, "imports/list.html", {"form": form, "imports": imports}, status=status)
    # --8<-- [end:upload-view]
